//! A chatroom: one binary serves the page (`/`) and the WebSocket (`/ws`) on one origin;
//! every message is broadcast to every session, and joining and leaving are announced
//! from the connect and disconnect hooks.
//!
//!     cargo run --example chatroom            # then open http://127.0.0.1:8080/?name=ada
//!
//! `[websocket]` in `transport.toml` or `TRANSPORT_WEBSOCKET__ADDRESS=0.0.0.0:9000`
//! chooses the address (and the limits, origins, ...). Messages are text frames,
//! `{"type":N,"payload":{...}}`, which the page reads with `JSON.parse`.

use serde::{Deserialize, Serialize};
use transport::ws::axum::{Router, response::Html, routing::get};
use transport::ws::{Disconnect, Framing, Session, WsConfig, WsError, WsMessage, WsServer};

/// What a browser sends: a line of text.
#[derive(Debug, Deserialize)]
struct Say {
    text: String,
}

/// What every browser is sent for a line someone said.
#[derive(Debug, Serialize)]
struct Said<'a> {
    from: &'a str,
    text: &'a str,
}

/// Someone joined or left.
#[derive(Debug, Serialize)]
struct Presence<'a> {
    name: &'a str,
    joined: bool,
}

const SAY: WsMessage<Say> = WsMessage::new(1);
const SAID: WsMessage<Said<'_>> = WsMessage::new(2);
const PRESENCE: WsMessage<Presence<'_>> = WsMessage::new(3);

/// The longest line and name kept.
const MAX_TEXT: usize = 2000;
const MAX_NAME: usize = 32;

/// A session's state: the name it chose (`?name=`).
struct Member {
    name: String,
}

fn chatroom(mut config: WsConfig) -> Result<WsServer<Member>, WsError> {
    config.framing = Framing::Text;
    WsServer::builder_with(config, |request| async move {
        let name: String = request
            .query("name")
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_NAME)
            .collect();
        let name = match name.trim() {
            "" => "guest".to_string(),
            name => name.to_string(),
        };
        Ok(Member { name })
    })
    .handle(SAY, |say: Say, session: Session<Member>| async move {
        let text: String = say.text.chars().take(MAX_TEXT).collect();
        let from = session.state().name.clone();
        session
            .server()
            .broadcast(
                SAID,
                &Said {
                    from: &from,
                    text: &text,
                },
            )
            .map(drop)
    })
    .on_connect(|session: Session<Member>| async move {
        let name = session.state().name.clone();
        tracing::info!(session = session.id(), %name, "joined");
        let _ = session.server().broadcast(
            PRESENCE,
            &Presence {
                name: &name,
                joined: true,
            },
        );
    })
    .on_disconnect(|session: Session<Member>, why: Disconnect| async move {
        let name = session.state().name.clone();
        tracing::info!(session = session.id(), %name, code = ?why.code, "left");
        let _ = session.server().broadcast(
            PRESENCE,
            &Presence {
                name: &name,
                joined: false,
            },
        );
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
