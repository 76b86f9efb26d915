#![allow(unused)]
use serde::Deserialize;
use transport::ws::{Session, WsMessage};

#[derive(Deserialize)]
pub struct Chat;
#[derive(Deserialize)]
pub struct Point;

const CHAT: WsMessage<Chat> = WsMessage::new(1);

pub struct Room;

#[transport::service]
impl Room {
    #[ws(message = CHAT)]
    async fn chat(&self, point: Point, session: Session<()>) {}
}

fn main() {}
