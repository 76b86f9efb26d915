//! A chatroom: one binary serves the page (`/`) and the WebSocket (`/ws`) on one origin.
//! Each browser picks a nickname and a room; a line goes to everyone in the room, a
//! newcomer gets the room's last lines, and joins, leaves and nickname changes are
//! announced (from the connect and disconnect hooks and the handlers).
//!
//!     cargo run --example chatroom    # then open http://127.0.0.1:8080/?name=ada&room=lobby
//!
//! `[websocket]` in `transport.toml` or `TRANSPORT_WEBSOCKET__ADDRESS=0.0.0.0:9000`
//! chooses the address (and the limits, origins, ...). Messages are text frames,
//! `{"type":N,"payload":{...}}`, which the page reads with `JSON.parse`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use transport::ws::axum::{Router, response::Html, routing::get};
use transport::ws::{Disconnect, Framing, Session, WsConfig, WsError, WsMessage, WsServer};

/// What a browser sends: a line of text.
#[derive(Debug, Deserialize)]
pub struct Say {
    pub text: String,
}

/// What a browser sends to change its nickname.
#[derive(Debug, Deserialize)]
pub struct Nick {
    pub name: String,
}

/// A line said in a room, as every browser there is sent it.
#[derive(Debug, Clone, Serialize)]
pub struct Said {
    pub from: String,
    pub text: String,
}

/// Someone joined, left, or took another name.
#[derive(Debug, Serialize)]
pub struct Notice {
    pub text: String,
}

/// The room's last lines, for a newcomer.
#[derive(Debug, Serialize)]
pub struct History {
    pub room: String,
    pub lines: Vec<Said>,
}

pub const SAY: WsMessage<Say> = WsMessage::new(1);
pub const SAID: WsMessage<Said> = WsMessage::new(2);
pub const NOTICE: WsMessage<Notice> = WsMessage::new(3);
pub const NICK: WsMessage<Nick> = WsMessage::new(4);
pub const HISTORY: WsMessage<History> = WsMessage::new(5);

/// The longest line and name kept, and how many lines a room remembers.
const MAX_TEXT: usize = 2000;
const MAX_NAME: usize = 32;
const HISTORY_LINES: usize = 50;

/// A session's state: its nickname and room (`?name=`, `?room=`).
pub struct Member {
    pub name: String,
    pub room: String,
}

/// The chatroom's state: each room's last lines.
#[derive(Default)]
pub struct Chatroom {
    history: Mutex<HashMap<String, VecDeque<Said>>>,
}

#[transport::service]
impl Chatroom {
    #[ws(message = SAY)]
    async fn say(&self, say: Say, session: Session<Member>) -> Result<(), WsError> {
        let (from, room) = {
            let member = session.state();
            (member.name.clone(), member.room.clone())
        };
        let line = Said {
            from,
            text: say.text.chars().take(MAX_TEXT).collect(),
        };
        self.remember(&room, line.clone());
        session.server().broadcast_to(&room, SAID, &line).map(drop)
    }

    #[ws(message = NICK)]
    async fn nick(&self, nick: Nick, session: Session<Member>) -> Result<(), WsError> {
        let name = nickname(Some(nick.name));
        let (old, room) = session.update(|member| {
            let old = std::mem::replace(&mut member.name, name.clone());
            (old, member.room.clone())
        });
        let text = format!("{old} is now {name}");
        session
            .server()
            .broadcast_to(&room, NOTICE, &Notice { text })
            .map(drop)
    }
}

impl Chatroom {
    fn remember(&self, room: &str, line: Said) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let lines = history.entry(room.to_string()).or_default();
        if lines.len() == HISTORY_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn history(&self, room: &str) -> Vec<Said> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history
            .get(room)
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A name from the query or a message: no control characters, trimmed, bounded.
fn nickname(name: Option<String>) -> String {
    let name: String = name
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    match name.trim() {
        "" => "guest".to_string(),
        name => name.to_string(),
    }
}

/// The chatroom's WebSocket server (text frames).
pub fn chatroom(mut config: WsConfig) -> Result<WsServer<Member>, WsError> {
    config.framing = Framing::Text;
    let room = std::sync::Arc::new(Chatroom::default());
    let history = std::sync::Arc::clone(&room);
    WsServer::builder_with(config, |request| async move {
        Ok(Member {
            name: nickname(request.query("name")),
            room: nickname(request.query("room").or_else(|| Some("lobby".into()))),
        })
    })
    .service_arc(room)
    .on_connect(move |session: Session<Member>| {
        let history = std::sync::Arc::clone(&history);
        async move {
            let (name, room) = {
                let member = session.state();
                (member.name.clone(), member.room.clone())
            };
            tracing::info!(session = session.id(), %name, %room, "joined");
            session.join(&room);
            let lines = history.history(&room);
            let _ = session.send(
                HISTORY,
                &History {
                    room: room.clone(),
                    lines,
                },
            );
            let text = format!("{name} joined");
            let _ = session
                .server()
                .broadcast_to(&room, NOTICE, &Notice { text });
        }
    })
    .on_disconnect(|session: Session<Member>, why: Disconnect| async move {
        let (name, room) = {
            let member = session.state();
            (member.name.clone(), member.room.clone())
        };
        tracing::info!(session = session.id(), %name, code = ?why.code, "left");
        let text = format!("{name} left");
        let _ = session
            .server()
            .broadcast_to(&room, NOTICE, &Notice { text });
    })
    .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = transport::Config::from_env()?.websocket;
    let address = config
        .address
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
    let server = chatroom(config)?;
    let app = Router::new()
        .route("/", get(|| async { Html(include_str!("index.html")) }))
        .merge(server.router());
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("chatroom listening on http://{}", listener.local_addr()?);
    let sessions = server.clone();
    transport::ws::axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // every session closed with 1001 (the browsers' pages say so), then stop
            sessions.shutdown().await;
        })
        .await?;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
