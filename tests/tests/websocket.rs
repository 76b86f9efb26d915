//! The WebSocket server against a real client (tokio-tungstenite) over TCP: typed
//! handlers and replies in each framing, sessions visible from the connect hook, rooms and
//! predicate broadcasts, bad frames and failing handlers answered per policy, slow and
//! silent clients, the close handshake, origin, authentication, size and session limits,
//! shutdown, and a broadcast to 1,000 sessions past a stalled one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use transport::ws::{
    BadFramePolicy, Disconnect, Framing, RawFrame, Rejection, Reply, Session, SlowConsumer,
    WsConfig, WsMessage, WsServer,
};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Chat {
    text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
}

const CHAT: WsMessage<Chat> = WsMessage::new(1);
const ECHO: WsMessage<Chat> = WsMessage::new(2);
const POINT: WsMessage<Point> = WsMessage::new(3);
const FAIL: WsMessage<Chat> = WsMessage::new(4);
const WELCOME: WsMessage<u64> = WsMessage::new(5);
const JOIN: WsMessage<String> = WsMessage::new(6);
const SLOW: WsMessage<u64> = WsMessage::new(7);

/// Starts `server` on a free port; its address.
async fn serve<S: Send + Sync + 'static>(server: &WsServer<S>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let server = server.clone();
    tokio::spawn(async move { server.serve(listener).await });
    address
}

fn request(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> tungstenite::handshake::client::Request {
    let mut request = format!("ws://{address}{path}")
        .into_client_request()
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

async fn connect(address: SocketAddr, path: &str) -> Client {
    connect_with(address, path, &[]).await
}

async fn connect_with(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Client {
    let (client, _) = tokio_tungstenite::connect_async(request(address, path, headers))
        .await
        .unwrap_or_else(|e| panic!("connect {path}: {e}"));
    client
}

/// The HTTP status an upgrade is refused with.
async fn refused(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    match tokio_tungstenite::connect_async(request(address, path, headers)).await {
        Ok(_) => panic!("the upgrade of {path} was accepted"),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("not an HTTP refusal: {other}"),
    }
}

/// The next data frame, as (type, JSON payload); pings and pongs skipped.
async fn next(client: &mut Client) -> (u32, serde_json::Value) {
    loop {
        let message = tokio::time::timeout(PATIENCE, client.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within {PATIENCE:?}"))
            .unwrap_or_else(|| panic!("the connection ended"))
            .unwrap_or_else(|e| panic!("read: {e}"));
        match message {
            Message::Binary(bytes) => {
                let kind = u32::from_le_bytes(bytes[..4].try_into().unwrap());
                let payload = serde_json::from_slice(&bytes[4..]).unwrap_or_else(|e| panic!("{e}"));
                return (kind, payload);
            }
            Message::Text(text) => {
                let envelope: serde_json::Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
                return (
                    u32::try_from(envelope["type"].as_u64().unwrap()).unwrap(),
                    envelope["payload"].clone(),
                );
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a data frame, got {other:?}"),
        }
    }
}

/// The close frame the server sends, after any data frames; read on to the end of the
/// connection, so the client's answer to it goes out.
async fn closed_with(client: &mut Client) -> Option<CloseFrame> {
    let mut close = None;
    loop {
        match tokio::time::timeout(PATIENCE, client.next()).await {
            Err(_) => panic!("no close within {PATIENCE:?}"),
            Ok(None) => return close,
            Ok(Some(Err(tungstenite::Error::ConnectionClosed))) => return close,
            Ok(Some(Err(error))) => panic!("read: {error}"),
            Ok(Some(Ok(Message::Close(frame)))) => close = frame,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The response head to a hand-written upgrade request with `extra` header lines.
async fn raw_upgrade(address: SocketAddr, extra: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        if read == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn binary(kind: u32, payload: &impl Serialize) -> Message {
    let mut frame = kind.to_le_bytes().to_vec();
    frame.extend(serde_json::to_vec(payload).unwrap());
    Message::Binary(frame.into())
}

fn chat(text: &str) -> Chat {
    Chat {
        text: text.to_string(),
    }
}

/// A server with the test handlers: CHAT broadcasts, ECHO replies, FAIL fails (or panics
/// on "panic"), JOIN joins a room; WELCOME is sent from the connect hook; disconnects are
/// reported on `gone`.
fn chat_server(
    config: WsConfig,
    gone: mpsc::UnboundedSender<(u64, Disconnect)>,
) -> WsServer<Option<i32>> {
    WsServer::<Option<i32>>::builder_with(config, |request| async move {
        // the viewport's position from the query: `?x=5`
        Ok(request.query("x").and_then(|x| x.parse().ok()))
    })
    .handle(
        CHAT,
        |chat: Chat, session: Session<Option<i32>>| async move {
            session.server().broadcast(CHAT, &chat).map(drop)
        },
    )
    .handle(
        ECHO,
        |chat: Chat, _session: Session<Option<i32>>| async move {
            Reply::new(
                ECHO,
                &Chat {
                    text: format!("echo: {}", chat.text),
                },
            )
        },
    )
    .handle(
        FAIL,
        |chat: Chat, _session: Session<Option<i32>>| async move {
            if chat.text == "panic" {
                panic!("the handler panicked on purpose");
            }
            Err::<(), _>(transport::Error::msg(format!("refused {}", chat.text)))
        },
    )
    .handle(
        JOIN,
        |room: String, session: Session<Option<i32>>| async move {
            session.join(&room);
            Reply::new(JOIN, &room)
        },
    )
    .on_connect(|session: Session<Option<i32>>| async move {
        // registered already: a send by id reaches it
        let id = session.id();
        session
            .server()
            .send(id, WELCOME, &id)
            .unwrap_or_else(|e| panic!("welcome: {e}"));
    })
    .on_disconnect(move |session: Session<Option<i32>>, why: Disconnect| {
        let gone = gone.clone();
        async move {
            let _ = gone.send((session.id(), why));
        }
    })
    .build()
    .unwrap_or_else(|e| panic!("build: {e}"))
}

fn quiet() -> mpsc::UnboundedSender<(u64, Disconnect)> {
    mpsc::unbounded_channel().0
}

/// Connects and reads the WELCOME: the session's id.
async fn join(address: SocketAddr, path: &str) -> (Client, u64) {
    let mut client = connect(address, path).await;
    let (kind, id) = next(&mut client).await;
    assert_eq!(kind, WELCOME.kind());
    // (a string of the JSON in kratos-transport's string framing)
    let id = id
        .as_u64()
        .or_else(|| id.as_str().and_then(|id| id.parse().ok()))
        .unwrap_or_else(|| panic!("welcome: {id}"));
    (client, id)
}

#[tokio::test]
async fn typed_handlers_reply_and_broadcast_in_each_framing() {
    for framing in [Framing::Binary, Framing::Text, Framing::TextStringPayload] {
        let server = chat_server(
            WsConfig {
                framing,
                ..WsConfig::default()
            },
            quiet(),
        );
        let address = serve(&server).await;
        let (mut a, _) = join(address, "/ws").await;
        let (mut b, _) = join(address, "/ws").await;

        let send = |kind: u32, value: &Chat| match framing {
            Framing::Binary => binary(kind, value),
            Framing::Text => {
                Message::text(serde_json::json!({"type": kind, "payload": value}).to_string())
            }
            _ => Message::text(
                serde_json::json!({"type": kind, "payload": serde_json::to_string(value).unwrap()})
                    .to_string(),
            ),
        };
        a.send(send(ECHO.kind(), &chat("hi"))).await.unwrap();
        let (kind, payload) = next(&mut a).await;
        assert_eq!(kind, ECHO.kind(), "{framing:?}");
        let payload = match framing {
            Framing::TextStringPayload => {
                serde_json::from_str(payload.as_str().expect("a string payload")).unwrap()
            }
            _ => payload,
        };
        assert_eq!(
            payload,
            serde_json::json!({"text": "echo: hi"}),
            "{framing:?}"
        );

        a.send(send(CHAT.kind(), &chat("<script>x</script>")))
            .await
            .unwrap();
        for client in [&mut a, &mut b] {
            let (kind, payload) = next(client).await;
            assert_eq!(kind, CHAT.kind());
            let text = match framing {
                Framing::TextStringPayload => payload.as_str().unwrap().to_string(),
                _ => payload.to_string(),
            };
            assert!(text.contains("<script>x</script>"), "{framing:?}: {text}");
        }
        assert_eq!(server.stats().received, 2);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_session_is_reachable_from_its_connect_hook_and_by_broadcast_at_once() {
    let server = chat_server(WsConfig::default(), quiet());
    let address = serve(&server).await;
    let (mut a, a_id) = join(address, "/ws").await;
    let (mut b, b_id) = join(address, "/ws").await;
    assert_ne!(a_id, b_id);
    assert_eq!(server.sessions(), 2);
    // a broadcast from outside any handler (a broker subscriber's, say) reaches both
    assert_eq!(server.broadcast(CHAT, &chat("all")).unwrap(), 2);
    assert_eq!(next(&mut a).await.1["text"], "all");
    assert_eq!(next(&mut b).await.1["text"], "all");
    // and a send by id only its session
    server.send(b_id, CHAT, &chat("b only")).unwrap();
    assert_eq!(next(&mut b).await.1["text"], "b only");
    assert!(matches!(
        server.send(999_999, CHAT, &chat("nobody")),
        Err(transport::ws::WsError::NoSession(999_999))
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn rooms_and_predicates_choose_who_a_broadcast_reaches() {
    let server = chat_server(WsConfig::default(), quiet());
    let address = serve(&server).await;
    let (mut left, _) = join(address, "/ws?x=-5").await;
    let (mut right, right_id) = join(address, "/ws?x=5").await;
    let (mut nowhere, _) = join(address, "/ws").await;

    // state from the upgrade request: the viewport's x
    let sent = server
        .broadcast_where(POINT, &Point { x: 7 }, |x| x.is_some_and(|x| x > 0))
        .unwrap();
    assert_eq!(sent, 1);
    assert_eq!(
        next(&mut right).await,
        (POINT.kind(), serde_json::json!({"x": 7}))
    );

    left.send(binary(JOIN.kind(), &"lobby")).await.unwrap();
    assert_eq!(next(&mut left).await.1, "lobby");
    assert!(server.join(right_id, "lobby"));
    assert_eq!(
        server.broadcast_to("lobby", CHAT, &chat("lobby")).unwrap(),
        2
    );
    assert_eq!(next(&mut left).await.1["text"], "lobby");
    assert_eq!(next(&mut right).await.1["text"], "lobby");
    assert!(server.leave(right_id, "lobby"));
    assert_eq!(
        server.broadcast_to("lobby", CHAT, &chat("again")).unwrap(),
        1
    );
    assert_eq!(next(&mut left).await.1["text"], "again");

    // the one that got nothing gets the next broadcast to all, and nothing before it
    server.broadcast(CHAT, &chat("everyone")).unwrap();
    assert_eq!(next(&mut nowhere).await.1["text"], "everyone");
    assert_eq!(next(&mut right).await.1["text"], "everyone");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_frames_get_an_error_frame_and_the_session_goes_on() {
    let server = chat_server(WsConfig::default(), quiet());
    let address = serve(&server).await;
    let (mut a, _) = join(address, "/ws").await;
    let (mut b, _) = join(address, "/ws").await;
    for (frame, kind) in [
        (Message::Binary(vec![1, 2].into()), "malformed"),
        (Message::text("not an envelope"), "malformed"),
        (binary(99, &chat("x")), "unknown-type"),
        (binary(CHAT.kind(), &Point { x: 1 }), "undecodable"),
        (binary(FAIL.kind(), &chat("this")), "handler"),
        (binary(FAIL.kind(), &chat("panic")), "panic"),
    ] {
        a.send(frame).await.unwrap();
        let (type_, error) = next(&mut a).await;
        assert_eq!(type_, transport::ws::ERROR_TYPE);
        assert_eq!(error["kind"], kind, "{error}");
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // still served, and so is the other session
    a.send(binary(ECHO.kind(), &chat("still here")))
        .await
        .unwrap();
    assert_eq!(next(&mut a).await.1["text"], "echo: still here");
    b.send(binary(ECHO.kind(), &chat("me too"))).await.unwrap();
    assert_eq!(next(&mut b).await.1["text"], "echo: me too");
    let stats = server.stats();
    assert_eq!(
        (
            stats.malformed,
            stats.unknown_type,
            stats.undecodable,
            stats.handler_errors
        ),
        (2, 1, 1, 2)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_fallback_takes_the_frames_no_typed_handler_takes() {
    let server = WsServer::<()>::builder(WsConfig::default())
        .handle(ECHO, |chat: Chat, _session: Session<()>| async move {
            Reply::new(ECHO, &chat)
        })
        .fallback(|frame: RawFrame, session: Session<()>| async move {
            let echoed = match frame {
                RawFrame::Text(text) => RawFrame::Text(format!("raw: {text}")),
                RawFrame::Binary(bytes) => RawFrame::Binary(bytes),
            };
            session.send_raw(echoed)
        })
        .build()
        .unwrap();
    let address = serve(&server).await;
    let mut client = connect(address, "/ws").await;
    // a typed message still goes to its handler
    client
        .send(binary(ECHO.kind(), &chat("typed")))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await.1["text"], "typed");
    // anything else, as it came
    client.send(Message::text("hello")).await.unwrap();
    let raw = tokio::time::timeout(PATIENCE, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(raw, Message::text("raw: hello"));
    client
        .send(Message::Binary(vec![9, 9].into()))
        .await
        .unwrap();
    let raw = tokio::time::timeout(PATIENCE, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(raw, Message::Binary(vec![9, 9].into()));
    assert_eq!(server.stats().malformed, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_sent_before_close_arrives_and_a_broadcast_may_run_inside_update() {
    let server = WsServer::<u32>::builder(WsConfig::default())
        .handle(ECHO, |chat: Chat, session: Session<u32>| async move {
            // a broadcast while this session's state is held for writing
            session.update(|count| {
                *count += 1;
                session.server().broadcast(CHAT, &chat).map(drop)
            })?;
            // sent, then closed: the frame goes out before the Close
            session.send(ECHO, &Chat { text: "bye".into() })?;
            session.close();
            Ok::<(), transport::Error>(())
        })
        .build()
        .unwrap();
    let address = serve(&server).await;
    let mut client = connect(address, "/ws").await;
    client
        .send(binary(ECHO.kind(), &chat("all")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await,
        (CHAT.kind(), serde_json::json!({"text": "all"}))
    );
    assert_eq!(
        next(&mut client).await,
        (ECHO.kind(), serde_json::json!({"text": "bye"}))
    );
    assert_eq!(
        closed_with(&mut client).await.unwrap().code,
        CloseCode::Normal
    );
    server.shutdown().await;
}

#[tokio::test]
async fn under_the_close_policy_a_bad_frame_closes_with_1007_or_1003() {
    let server = chat_server(
        WsConfig {
            bad_frames: BadFramePolicy::Close,
            ..WsConfig::default()
        },
        quiet(),
    );
    let address = serve(&server).await;
    for (frame, code) in [
        (Message::Binary(vec![1].into()), CloseCode::Invalid),
        (binary(99, &1), CloseCode::Unsupported),
        (binary(CHAT.kind(), &Point { x: 1 }), CloseCode::Invalid),
    ] {
        let (mut client, _) = join(address, "/ws").await;
        client.send(frame).await.unwrap();
        let close = closed_with(&mut client).await.expect("a close frame");
        assert_eq!(close.code, code);
    }
    // the server still serves
    let (mut client, _) = join(address, "/ws").await;
    client.send(binary(ECHO.kind(), &chat("ok"))).await.unwrap();
    assert_eq!(next(&mut client).await.1["text"], "echo: ok");
    server.shutdown().await;
}

#[tokio::test]
async fn the_close_handshake_completes_and_the_disconnect_hook_runs() {
    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let server = chat_server(WsConfig::default(), gone_tx);
    let address = serve(&server).await;
    let (mut client, id) = join(address, "/ws").await;
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    // the server answers the Close, then the connection ends
    let answer = closed_with(&mut client).await.expect("the server's close");
    assert_eq!(answer.code, CloseCode::Normal);
    let (gone_id, why) = tokio::time::timeout(PATIENCE, gone.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone_id, id);
    assert_eq!(
        (why.code, why.reason.as_str(), why.by_server),
        (Some(1000), "bye", false)
    );
    assert_eq!(server.sessions(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_the_idle_timeout() {
    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let server = chat_server(
        WsConfig {
            ping_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(400),
            close_timeout: Duration::from_millis(500),
            ..WsConfig::default()
        },
        gone_tx,
    );
    let address = serve(&server).await;
    // a client that never reads never answers the pings
    let (_silent, id) = join(address, "/ws").await;
    // one that reads answers them, and stays
    let (mut alive, _) = join(address, "/ws").await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reading = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return alive,
                frame = alive.next() => match frame {
                    Some(Ok(_)) => {}
                    other => panic!("the reading client lost its session: {other:?}"),
                },
            }
        }
    });
    let (gone_id, why) = tokio::time::timeout(PATIENCE, gone.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone_id, id);
    assert!(why.by_server);
    assert_eq!(why.code, Some(1001));
    // well past the idle timeout, the reading one is still there
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(server.sessions(), 1);
    let _ = stop.send(());
    let mut alive = reading.await.unwrap();
    alive
        .send(binary(ECHO.kind(), &chat("here")))
        .await
        .unwrap();
    assert_eq!(next(&mut alive).await.1["text"], "echo: here");
    assert_eq!(server.stats().idle_closed, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn origins_are_checked_same_origin_by_default() {
    let server = chat_server(WsConfig::default(), quiet());
    let address = serve(&server).await;
    let host = address.to_string();
    let same = format!("http://{host}");
    // no Origin (not a browser), or the server's own: served
    join(address, "/ws").await;
    connect_with(address, "/ws", &[("origin", &same)]).await;
    // another site's page: refused before any WebSocket exists
    assert_eq!(
        refused(address, "/ws", &[("origin", "https://evil.example")]).await,
        403
    );
    assert_eq!(server.stats().refused_origin, 1);
    server.shutdown().await;

    let listed = chat_server(
        WsConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..WsConfig::default()
        },
        quiet(),
    );
    let address = serve(&listed).await;
    connect_with(address, "/ws", &[("origin", "https://app.example")]).await;
    assert_eq!(
        refused(address, "/ws", &[("origin", "https://evil.example")]).await,
        403
    );
    listed.shutdown().await;
}

#[tokio::test]
async fn authentication_refuses_before_the_upgrade_and_never_echoes_a_token() {
    let server = WsServer::<String>::builder_with(WsConfig::default(), |request| async move {
        match request.header("authorization") {
            Some("Bearer good") => Ok("alice".to_string()),
            Some(_) => Err(Rejection::forbidden("not this one")),
            None => Err(Rejection::unauthorized("a bearer token is needed")),
        }
    })
    .handle(ECHO, |_: Chat, session: Session<String>| async move {
        let user = session.state().clone();
        Reply::new(ECHO, &Chat { text: user })
    })
    .build()
    .unwrap();
    let address = serve(&server).await;
    assert_eq!(refused(address, "/ws", &[]).await, 401);
    assert_eq!(
        refused(address, "/ws", &[("authorization", "Bearer bad")]).await,
        403
    );
    // a token offered as a subprotocol (a common browser workaround) is not echoed back
    let head = raw_upgrade(
        address,
        &[
            "authorization: Bearer good",
            "sec-websocket-protocol: secret-token",
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!head.to_lowercase().contains("secret-token"), "{head}");
    let mut client = connect_with(address, "/ws", &[("authorization", "Bearer good")]).await;
    client
        .send(binary(ECHO.kind(), &chat("who")))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await.1["text"], "alice");
    assert_eq!(server.stats().refused_auth, 2);
    server.shutdown().await;
}

#[tokio::test]
async fn limits_refuse_a_session_too_many_and_a_message_too_large() {
    let server = chat_server(
        WsConfig {
            max_sessions: 2,
            max_message_bytes: 1024,
            ..WsConfig::default()
        },
        quiet(),
    );
    let address = serve(&server).await;
    let (mut a, _) = join(address, "/ws").await;
    let (_b, _) = join(address, "/ws").await;
    assert_eq!(refused(address, "/ws", &[]).await, 503);
    // over the size limit: that connection ends (1009), the server goes on
    a.send(binary(ECHO.kind(), &chat(&"x".repeat(4096))))
        .await
        .unwrap();
    if let Some(close) = closed_with(&mut a).await {
        assert_eq!(close.code, CloseCode::Size);
    }
    drop(a);
    // its slot is free again
    let mut c = None;
    for _ in 0..50 {
        if server.sessions() < 2 {
            c = Some(join(address, "/ws").await.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = c.expect("a slot freed by the closed session");
    c.send(binary(ECHO.kind(), &chat("ok"))).await.unwrap();
    assert_eq!(next(&mut c).await.1["text"], "echo: ok");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_session_with_1001_after_a_running_handler() {
    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let server = WsServer::<()>::builder(WsConfig::default())
        .handle(SLOW, |ms: u64, _session: Session<()>| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Reply::new(SLOW, &ms)
        })
        .on_disconnect(move |session: Session<()>, why: Disconnect| {
            let gone = gone_tx.clone();
            async move {
                let _ = gone.send((session.id(), why));
            }
        })
        .build()
        .unwrap();
    let address = serve(&server).await;
    let mut busy = connect(address, "/ws").await;
    let mut idle = connect(address, "/ws").await;
    busy.send(binary(SLOW.kind(), &300u64)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    // the running handler's reply still arrives, then the close
    assert_eq!(next(&mut busy).await, (SLOW.kind(), serde_json::json!(300)));
    assert_eq!(closed_with(&mut busy).await.unwrap().code, CloseCode::Away);
    assert_eq!(closed_with(&mut idle).await.unwrap().code, CloseCode::Away);
    stopping.await.unwrap();
    for _ in 0..2 {
        let (_, why) = tokio::time::timeout(PATIENCE, gone.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(why.code, Some(1001));
    }
    assert_eq!(server.sessions(), 0);
    // and no new session opens (the listener has stopped, too)
    assert!(
        tokio_tungstenite::connect_async(request(address, "/ws", &[]))
            .await
            .is_err()
    );
}

/// A client that never reads, with a small receive window: its socket fills fast.
async fn stalled_client(address: SocketAddr) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(address).await.unwrap();
    tokio_tungstenite::client_async(request(address, "/ws", &[]), MaybeTlsStream::Plain(stream))
        .await
        .unwrap_or_else(|e| panic!("stalled client: {e}"))
        .0
}

#[tokio::test]
async fn under_the_close_policy_a_slow_consumer_is_cut_off_and_the_others_go_on() {
    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let (opened_tx, mut opened) = mpsc::unbounded_channel();
    let server = WsServer::<()>::builder(WsConfig {
        outbox: 8,
        slow_consumer: SlowConsumer::Close,
        close_timeout: Duration::from_millis(500),
        ..WsConfig::default()
    })
    .on_connect(move |session: Session<()>| {
        let _ = opened_tx.send(session.id());
        async {}
    })
    .on_disconnect(move |session: Session<()>, why: Disconnect| {
        let _ = gone_tx.send((session.id(), why));
        async {}
    })
    .build()
    .unwrap();
    let address = serve(&server).await;
    let _stalled = stalled_client(address).await;
    let stalled = opened.recv().await.unwrap();
    let mut reader = connect(address, "/ws").await;
    opened.recv().await.unwrap();
    let filler = "x".repeat(1024);
    let mut sent = 0u64;
    // broadcasts until the stalled one is cut off; the reader keeps up
    while server.stats().slow_closed == 0 {
        server.broadcast(SLOW, &sent).unwrap();
        let _ = &filler;
        server.send(stalled, CHAT, &chat(&filler)).ok();
        assert_eq!(next(&mut reader).await.1, serde_json::json!(sent));
        sent += 1;
        assert!(sent < 100_000, "the stalled client was never cut off");
    }
    let (id, why) = tokio::time::timeout(PATIENCE, gone.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, stalled);
    assert_eq!((why.code, why.by_server), (Some(1008), true));
    assert!(matches!(
        server.send(stalled, CHAT, &chat("more")),
        Err(transport::ws::WsError::NoSession(_) | transport::ws::WsError::Closing(_))
    ));
    // the reader goes on
    server.broadcast(SLOW, &u64::MAX).unwrap();
    assert_eq!(next(&mut reader).await.1, serde_json::json!(u64::MAX));
    assert_eq!(server.sessions(), 1);
    assert_eq!(server.stats().dropped, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_a_thousand_sessions_past_a_stalled_one() {
    const SESSIONS: usize = 1000;
    const ROUNDS: u64 = 200;
    let (opened_tx, mut opened) = mpsc::unbounded_channel();
    let server = WsServer::<()>::builder(WsConfig {
        outbox: 16,
        slow_consumer: SlowConsumer::DropOldest,
        ..WsConfig::default()
    })
    .on_connect(move |session: Session<()>| {
        let _ = opened_tx.send(session.id());
        async {}
    })
    .build()
    .unwrap();
    let address = serve(&server).await;
    // the stalled client: connected, never reading, with a small receive window (the
    // socket buffers fill, then its outbox, whose oldest frames are dropped)
    let stalled = stalled_client(address).await;
    let stalled_id = tokio::time::timeout(PATIENCE, opened.recv())
        .await
        .unwrap()
        .unwrap();
    let mut readers = Vec::new();
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<(u64, Instant)>();
    for _ in 0..SESSIONS {
        let mut client = connect(address, "/ws").await;
        let arrived = arrived_tx.clone();
        readers.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let (_, round) = next(&mut client).await;
                let _ = arrived.send((round["round"].as_u64().unwrap(), Instant::now()));
            }
            client
        }));
    }
    drop(arrived_tx);
    // (a session is registered just after its client's handshake returns)
    for _ in 0..SESSIONS {
        tokio::time::timeout(PATIENCE, opened.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(server.sessions(), SESSIONS + 1);
    let _ = &stalled;
    #[derive(Serialize)]
    struct Round {
        round: u64,
        filler: String,
    }
    const ROUND: WsMessage<Round> = WsMessage::new(8);
    let filler = "x".repeat(1024);
    // stall it for real before the rounds: its socket buffers full (a few MiB on
    // loopback), then its outbox. Drops alone do not show that (a session task slow to
    // get the CPU drops too, then catches up): stalled is when, three times in a row,
    // every frame of a batch pushed after a pause is dropped (the outbox holds 16: a
    // writer still writing would have emptied it during the pause)
    let mut pushed = 0;
    let mut full_in_a_row = 0;
    while full_in_a_row < 3 {
        let before = server.stats().dropped;
        for _ in 0..64 {
            server
                .send(
                    stalled_id,
                    ROUND,
                    &Round {
                        round: u64::MAX,
                        filler: filler.clone(),
                    },
                )
                .unwrap_or_else(|e| panic!("to the stalled client: {e}"));
        }
        pushed += 64;
        assert!(pushed < 200_000, "the stalled client never stalled");
        full_in_a_row = if server.stats().dropped - before == 64 {
            full_in_a_row + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped_before = server.stats().dropped;
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        let sent_at = Instant::now();
        server
            .broadcast(
                ROUND,
                &Round {
                    round,
                    filler: filler.clone(),
                },
            )
            .unwrap();
        // every reader gets this round before the next is sent
        for _ in 0..SESSIONS {
            let (got, at) = tokio::time::timeout(PATIENCE, arrived.recv())
                .await
                .unwrap_or_else(|_| panic!("round {round}: a reader waited past {PATIENCE:?}"))
                .unwrap();
            assert_eq!(got, round);
            latencies.push(at.duration_since(sent_at));
        }
    }
    latencies.sort();
    let at = |p: usize| latencies[(latencies.len() - 1) * p / 100];
    println!(
        "broadcast of 1 KiB to {SESSIONS} sessions, {ROUNDS} rounds, one stalled client: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; dropped for the stalled one: {}",
        at(50),
        at(90),
        at(99),
        latencies[latencies.len() - 1],
        server.stats().dropped
    );
    for reader in readers {
        reader.await.unwrap();
    }
    // the rounds reached it too, and were dropped there, not waited for
    assert!(server.stats().dropped >= dropped_before + ROUNDS);
    drop(stalled);
    server.shutdown().await;
}

/// A broker subscriber sends to browsers through its context: the realtime map's shape
/// (positions in from a topic, each browser sent the ones near its viewport), the server
/// run by the App from `[websocket]`, and closed by the App's shutdown.
mod bridge {
    use super::*;

    #[transport::subscriber(topic = "ws.positions")]
    async fn forward(point: Point, ctx: &transport::Context) -> Result<(), transport::Error> {
        let server = ctx
            .websocket::<Option<i32>>()
            .ok_or("the App runs no websocket server")?;
        server.broadcast_where(POINT, &point, |x| {
            x.is_some_and(|x| (x - point.x).abs() <= 10)
        })?;
        Ok(())
    }

    #[tokio::test]
    async fn a_subscriber_broadcasts_to_the_browsers_whose_viewport_holds_it() {
        let config = transport_tests::memory_config(
            "[websocket]\naddress = \"127.0.0.1:0\"\npath = \"/map\"\n",
        );
        let server = chat_server(config.websocket.clone(), quiet());
        let app = transport::App::new(config)
            .select_module(module_path!())
            .websocket(server.clone())
            .start()
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let address = app.websocket_addresses()[0];
        let (mut near, _) = join(address, "/map?x=100").await;
        let (mut far, _) = join(address, "/map?x=-100").await;
        for x in [95, -95, 105] {
            app.publisher()
                .publish("ws.positions", &Point { x })
                .await
                .unwrap();
        }
        assert_eq!(next(&mut near).await.1, serde_json::json!({"x": 95}));
        assert_eq!(next(&mut far).await.1, serde_json::json!({"x": -95}));
        assert_eq!(next(&mut near).await.1, serde_json::json!({"x": 105}));
        // the App's shutdown closes the sessions with 1001
        let stopping = tokio::spawn(app.shutdown());
        assert_eq!(closed_with(&mut near).await.unwrap().code, CloseCode::Away);
        assert_eq!(closed_with(&mut far).await.unwrap().code, CloseCode::Away);
        stopping.await.unwrap().unwrap();
        assert_eq!(server.sessions(), 0);
    }
}
