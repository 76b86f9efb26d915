//! `#[ws]` methods next to `#[subscriber]` ones in one service, registered with
//! `WsServerBuilder::service`; every return type a handler may have.
use serde::{Deserialize, Serialize};
use transport::ws::{Reply, Session, WsConfig, WsMessage, WsServer};

#[derive(Serialize, Deserialize)]
pub struct Chat {
    text: String,
}

const CHAT: WsMessage<Chat> = WsMessage::new(1);
const PING: WsMessage<u32> = WsMessage::new(2);
const BYTES: WsMessage<Vec<u8>, transport::codec::MsgPack> =
    WsMessage::new(3).with_codec::<transport::codec::MsgPack>();

pub struct Viewer {
    zoom: u8,
}

pub struct Room {
    greeting: String,
}

#[transport::service]
impl Room {
    #[ws(message = CHAT)]
    async fn chat(&self, chat: Chat, session: Session<Viewer>) -> Result<(), transport::Error> {
        session.server().broadcast(CHAT, &chat)?;
        Ok(())
    }

    #[ws(message = PING)]
    async fn ping(&self, n: u32, session: transport::ws::Session<Viewer>) -> Reply {
        let _ = session.state().zoom;
        Reply::new(PING, &(n + 1))
    }

    #[ws(message = BYTES)]
    async fn bytes(&self, bytes: Vec<u8>, _session: Session<Viewer>) {
        let _ = (bytes, &self.greeting);
    }

    #[subscriber(topic = "room.events")]
    async fn event(&self, text: String) {}
}

fn main() {
    let server = WsServer::builder_with(WsConfig::default(), |_request| async {
        Ok(Viewer { zoom: 3 })
    })
    .service(Room {
        greeting: "hi".into(),
    })
    .build();
    assert!(server.is_ok());
}
