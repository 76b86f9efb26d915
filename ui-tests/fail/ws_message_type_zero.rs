#![allow(unused)]
use transport::ws::WsMessage;

// type 0 is the server's error frame
const CHAT: WsMessage<String> = WsMessage::new(0);

fn main() {
    let _ = CHAT;
}
