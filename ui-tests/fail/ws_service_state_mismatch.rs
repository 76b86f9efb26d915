#![allow(unused)]
use serde::Deserialize;
use transport::ws::{Session, WsConfig, WsMessage, WsServer};

#[derive(Deserialize)]
pub struct Chat;

const CHAT: WsMessage<Chat> = WsMessage::new(1);

pub struct Viewer;
pub struct Room;

#[transport::service]
impl Room {
    #[ws(message = CHAT)]
    async fn chat(&self, chat: Chat, session: Session<Viewer>) {}
}

fn main() {
    // the server's sessions hold `()`, the handlers want `Viewer`
    let _ = WsServer::<()>::builder(WsConfig::default()).service(Room);
}
