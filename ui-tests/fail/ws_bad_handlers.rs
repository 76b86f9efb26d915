#![allow(unused)]
use serde::Deserialize;
use transport::ws::{Session, WsMessage};

#[derive(Deserialize)]
pub struct Chat;

const CHAT: WsMessage<Chat> = WsMessage::new(1);

pub struct Room;

// every problem reported at once, each on its own token
#[transport::service]
impl Room {
    #[ws(message = CHAT)]
    fn not_async(&self, chat: Chat, session: Session<()>) {}

    #[ws(message = CHAT)]
    async fn no_session(&self, chat: Chat) {}

    #[ws(message = CHAT)]
    async fn by_reference(&self, chat: &Chat, session: Session<()>) {}

    #[ws(message = CHAT)]
    async fn mutable(&mut self, chat: Chat, session: Session<()>) {}

    #[ws(message = CHAT)]
    async fn not_a_session(&self, chat: Chat, session: String) {}

    #[ws]
    async fn no_message(&self, chat: Chat, session: Session<()>) {}

    #[ws(message = CHAT, topic = "x")]
    async fn unknown_key(&self, chat: Chat, session: Session<()>) {}

    #[ws(message = CHAT)]
    #[subscriber(topic = "x")]
    async fn both(&self, chat: Chat, session: Session<()>) {}
}

pub struct Mixed;

#[transport::service]
impl Mixed {
    #[ws(message = CHAT)]
    async fn one(&self, chat: Chat, session: Session<()>) {}

    #[ws(message = CHAT)]
    async fn other(&self, chat: Chat, session: Session<String>) {}
}

fn main() {}
