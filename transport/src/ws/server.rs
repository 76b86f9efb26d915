//! The server: the upgrade endpoint (origin, capacity, authentication), one task per
//! session (read, handle, write, ping, close), sends and broadcasts, shutdown.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as Outgoing, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::{self, FrameError};
use super::session::{Closing, Outbox, Registry, SessionId, SessionShared, UpgradeRequest};
use super::stats::{Counters, WsStats};
use super::{
    AuthenticateFn, BadFramePolicy, ConnectFn, DisconnectFn, ERROR_TYPE, FallbackFn, Handled,
    HandlerFn, RawFrame, Reply, WsConfig, WsError, WsMessage,
};
use crate::codec::Encoder;

/// Close codes this server sends (RFC 6455, 7.4.1).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
}

pub(crate) struct Parts<S> {
    pub config: WsConfig,
    pub handlers: HashMap<u32, HandlerFn<S>>,
    pub authenticate: AuthenticateFn<S>,
    pub on_connect: Option<ConnectFn<S>>,
    pub on_disconnect: Option<DisconnectFn<S>>,
    pub fallback: Option<FallbackFn<S>>,
}

struct Inner<S> {
    parts: Parts<S>,
    registry: Registry<S>,
    counters: Counters,
    /// Sessions open or being opened (counted at the upgrade, for `max_sessions`).
    admitted: AtomicUsize,
    shutdown: CancellationToken,
    sessions: TaskTracker,
}

/// A WebSocket server: cheap to clone, and every clone is the same server. Mount it
/// ([`router`](Self::router)), or run it on its own ([`serve`](Self::serve)); send to
/// its sessions from anywhere (a broker subscriber's handler, say).
pub struct WsServer<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for WsServer<S> {
    fn clone(&self) -> Self {
        WsServer {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> std::fmt::Debug for WsServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsServer")
            .field("path", &self.inner.parts.config.path)
            .field("sessions", &self.inner.registry.len())
            .finish()
    }
}

/// How a session ended, for the disconnect hook.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnect {
    /// The close code sent or received; `None` when the connection just ended.
    pub code: Option<u16>,
    /// The close reason, if any.
    pub reason: String,
    /// Whether the server ended it (shutdown, idle, slow consumer, a bad frame).
    pub by_server: bool,
}

/// A session, as its handlers and hooks see it: its id, the request that opened it, its
/// state, and the server it belongs to. Cheap to clone.
pub struct Session<S> {
    shared: Arc<SessionShared<S>>,
    server: WsServer<S>,
}

impl<S> Clone for Session<S> {
    fn clone(&self) -> Self {
        Session {
            shared: Arc::clone(&self.shared),
            server: self.server.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static> Session<S> {
    /// Sends `frame` to this session as it is (outside the server's framing: for the
    /// [`fallback`](super::WsServerBuilder::fallback)'s own protocol, or an echo).
    pub fn send_raw(&self, frame: RawFrame) -> Result<(), WsError> {
        let frame = match frame {
            RawFrame::Text(text) => Outgoing::text(text),
            RawFrame::Binary(bytes) => Outgoing::Binary(bytes),
        };
        self.server.push(&self.shared, frame)
    }

    /// This session's id (unique for the server's life).
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// The upgrade request that opened it.
    pub fn request(&self) -> &UpgradeRequest {
        &self.shared.request
    }

    /// Its state, to read (do not hold the guard across an `.await`).
    pub fn state(&self) -> RwLockReadGuard<'_, S> {
        self.shared
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes its state (what a predicate broadcast sees next). `change` runs under the
    /// state's write lock: it must not call `broadcast_where` (which reads every state).
    pub fn update<R>(&self, change: impl FnOnce(&mut S) -> R) -> R {
        change(
            &mut self
                .shared
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Sends `value` to this session.
    pub fn send<T, C: Encoder<T>>(
        &self,
        message: WsMessage<T, C>,
        value: &T,
    ) -> Result<(), WsError> {
        let frame = self.server.frame(message.kind, &C::encode(value)?)?;
        self.server.push(&self.shared, frame)
    }

    /// Joins room `room` (see [`WsServer::broadcast_to`]).
    pub fn join(&self, room: &str) -> bool {
        self.server.join(self.shared.id, room)
    }

    /// Leaves room `room`.
    pub fn leave(&self, room: &str) -> bool {
        self.server.leave(self.shared.id, room)
    }

    /// Closes the session (1000) once what is queued for it is written.
    pub fn close(&self) {
        self.shared.outbox.close(Closing::Asked);
    }

    /// The server, to send to other sessions.
    pub fn server(&self) -> &WsServer<S> {
        &self.server
    }
}

impl<S: Send + Sync + 'static> WsServer<S> {
    pub(crate) fn from_parts(parts: Parts<S>) -> Self {
        WsServer {
            inner: Arc::new(Inner {
                parts,
                registry: Registry::default(),
                counters: Counters::default(),
                admitted: AtomicUsize::new(0),
                shutdown: CancellationToken::new(),
                sessions: TaskTracker::new(),
            }),
        }
    }

    /// The server's settings.
    pub fn config(&self) -> &WsConfig {
        &self.inner.parts.config
    }

    /// An axum router serving the upgrade endpoint at `config.path`: merge it into your
    /// own (REST, static files and WebSocket on one origin).
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                &self.inner.parts.config.path,
                axum::routing::get(upgrade::<S>),
            )
            .with_state(self.clone())
    }

    /// Serves [`router`](Self::router) on `listener` until [`shutdown`](Self::shutdown).
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> Result<(), WsError> {
        let address = listener
            .local_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let shutdown = self.inner.shutdown.clone();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|source| WsError::Listen { address, source })
    }

    /// Binds `config.address` and serves it until shutdown; the bound address once
    /// listening (`127.0.0.1:0` picks a free port).
    pub async fn bind(&self) -> Result<(std::net::SocketAddr, super::Serving), WsError> {
        let address = self.inner.parts.config.address.ok_or_else(|| {
            WsError::Config("no `address` to listen on (set `websocket.address`)".to_string())
        })?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| WsError::Listen {
                address: address.to_string(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| WsError::Listen {
            address: address.to_string(),
            source,
        })?;
        let server = self.clone();
        Ok((bound, Box::pin(async move { server.serve(listener).await })))
    }

    /// Closes every session (1001, once what is queued is written), refuses new ones, and
    /// waits up to `close_timeout` for the sessions to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.sessions.close();
        if tokio::time::timeout(
            self.inner.parts.config.close_timeout + Duration::from_secs(1),
            self.inner.sessions.wait(),
        )
        .await
        .is_err()
        {
            tracing::warn!(
                open = self.inner.registry.len(),
                "websocket sessions still open after close_timeout"
            );
        }
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.inner.registry.len()
    }

    /// The server's counters.
    pub fn stats(&self) -> WsStats {
        self.inner.counters.snapshot()
    }

    /// The frame for `payload` as message type `kind`, in this server's framing.
    fn frame(&self, kind: u32, payload: &[u8]) -> Result<Outgoing, WsError> {
        Ok(frame::encode(
            self.inner.parts.config.framing,
            kind,
            payload,
        )?)
    }

    fn push(&self, session: &SessionShared<S>, frame: Outgoing) -> Result<(), WsError> {
        if session.outbox.push(frame, &self.inner.counters) {
            Ok(())
        } else {
            Err(WsError::Closing(session.id))
        }
    }

    /// Sends `value` to session `session`.
    pub fn send<T, C: Encoder<T>>(
        &self,
        session: SessionId,
        message: WsMessage<T, C>,
        value: &T,
    ) -> Result<(), WsError> {
        let target = self
            .inner
            .registry
            .get(session)
            .ok_or(WsError::NoSession(session))?;
        let frame = self.frame(message.kind, &C::encode(value)?)?;
        self.push(&target, frame)
    }

    /// Sends `value` to every open session (encoded and framed once); how many it was
    /// queued for. Never waits on a slow session.
    pub fn broadcast<T, C: Encoder<T>>(
        &self,
        message: WsMessage<T, C>,
        value: &T,
    ) -> Result<usize, WsError> {
        // (no session's state is read: a broadcast from inside `Session::update` works)
        let frame = self.frame(message.kind, &C::encode(value)?)?;
        let mut sent = 0;
        self.inner.registry.for_each(|session| {
            if session.outbox.push(frame.clone(), &self.inner.counters) {
                sent += 1;
            }
        });
        Ok(sent)
    }

    /// Sends `value` to the sessions whose state passes `filter` (one broadcast serving
    /// each browser only what its viewport shows, say).
    pub fn broadcast_where<T, C: Encoder<T>>(
        &self,
        message: WsMessage<T, C>,
        value: &T,
        filter: impl Fn(&S) -> bool,
    ) -> Result<usize, WsError> {
        let frame = self.frame(message.kind, &C::encode(value)?)?;
        let mut sent = 0;
        self.inner.registry.for_each(|session| {
            let wanted = filter(
                &session
                    .state
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if wanted && session.outbox.push(frame.clone(), &self.inner.counters) {
                sent += 1;
            }
        });
        Ok(sent)
    }

    /// Sends `value` to the sessions in room `room`.
    pub fn broadcast_to<T, C: Encoder<T>>(
        &self,
        room: &str,
        message: WsMessage<T, C>,
        value: &T,
    ) -> Result<usize, WsError> {
        let frame = self.frame(message.kind, &C::encode(value)?)?;
        let sent = self
            .inner
            .registry
            .members(room)
            .iter()
            .filter(|session| session.outbox.push(frame.clone(), &self.inner.counters))
            .count();
        Ok(sent)
    }

    /// Puts session `session` in room `room`; `false` if there is no such session.
    pub fn join(&self, session: SessionId, room: &str) -> bool {
        self.inner.registry.join(session, room)
    }

    /// Takes session `session` out of room `room`; whether it was in it.
    pub fn leave(&self, session: SessionId, room: &str) -> bool {
        self.inner.registry.leave(session, room)
    }

    /// Closes session `session` (1000) once what is queued for it is written.
    pub fn close(&self, session: SessionId) -> bool {
        self.inner
            .registry
            .get(session)
            .map(|session| {
                session.outbox.close(Closing::Asked);
            })
            .is_some()
    }

    /// Whether `headers` come from an origin this server accepts.
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            // not a browser: an origin check protects browsers' users only
            return true;
        };
        let allowed = &self.inner.parts.config.allowed_origins;
        if allowed.is_empty() {
            // same origin: the Origin's host[:port] is the Host the request went to
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            let origin_host = origin.split_once("://").map(|(_, rest)| rest);
            return host.is_some() && origin_host == host;
        }
        allowed
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }
}

/// Releases a `max_sessions` slot when dropped (also when the upgrade never happens).
struct Admission<S> {
    server: WsServer<S>,
}

impl<S> Drop for Admission<S> {
    fn drop(&mut self) {
        self.server.inner.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The upgrade endpoint: origin, capacity, authentication, then the session.
async fn upgrade<S: Send + Sync + 'static>(
    State(server): State<WsServer<S>>,
    uri: Uri,
    headers: HeaderMap,
    socket: WebSocketUpgrade,
) -> Response {
    let counters = &server.inner.counters;
    if !server.origin_allowed(&headers) {
        counters.refused_origin.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            origin = ?headers.get(header::ORIGIN),
            "websocket upgrade refused: origin not allowed"
        );
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let config = &server.inner.parts.config;
    let before = server.inner.admitted.fetch_add(1, Ordering::AcqRel);
    // released on every path from here (a refusal, a failed upgrade, the session's end)
    let admission = Admission {
        server: server.clone(),
    };
    if server.inner.shutdown.is_cancelled() || before >= config.max_sessions {
        counters.refused_full.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no room for another session",
        )
            .into_response();
    }
    let request = UpgradeRequest { uri, headers };
    let state = match (server.inner.parts.authenticate)(request.clone()).await {
        Ok(state) => state,
        Err(rejection) => {
            counters.refused_auth.fetch_add(1, Ordering::Relaxed);
            tracing::info!(reason = %rejection.reason, "websocket upgrade refused by authentication");
            return (rejection.status, rejection.reason).into_response();
        }
    };
    let limit = config.max_message_bytes;
    // no subprotocol is chosen: whatever the client offers (a token, say) is never echoed
    socket
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let tracker = server.inner.sessions.clone();
            tracker.track_future(async move {
                let _admission = admission;
                run_session(server, socket, request, state).await;
            })
        })
}

/// Why the session loop ended.
enum End {
    /// The client closed (its Close frame received), or the connection ended.
    Client(Option<u16>, String),
    /// The server closes with this code.
    Server(u16, &'static str),
}

async fn run_session<S: Send + Sync + 'static>(
    server: WsServer<S>,
    mut socket: WebSocket,
    request: UpgradeRequest,
    state: S,
) {
    let config = &server.inner.parts.config;
    let id = server.inner.registry.next_id();
    let shared = Arc::new(SessionShared {
        id,
        request,
        state: std::sync::RwLock::new(state),
        outbox: Outbox::new(config.outbox, config.slow_consumer),
        rooms: Default::default(),
    });
    // registered before the connect hook: a send or broadcast reaches it from now on
    server.inner.registry.insert(Arc::clone(&shared));
    server.inner.counters.opened.fetch_add(1, Ordering::Relaxed);
    let session = Session {
        shared: Arc::clone(&shared),
        server: server.clone(),
    };
    tracing::debug!(session = id, "websocket session open");
    // a connect hook that panics or outlasts shutdown ends the session, not the registry
    let connected = match &server.inner.parts.on_connect {
        Some(hook) => tokio::select! {
            hooked = AssertUnwindSafe(hook(session.clone())).catch_unwind() => match hooked {
                Ok(()) => true,
                Err(_) => {
                    tracing::error!(session = id, "the websocket connect hook panicked; closing the session");
                    false
                }
            },
            () = server.inner.shutdown.cancelled() => false,
        },
        None => true,
    };
    let end = if connected {
        serve_session(&server, &session, &mut socket).await
    } else if server.inner.shutdown.is_cancelled() {
        End::Server(close::GOING_AWAY, "server shutting down")
    } else {
        End::Server(close::INTERNAL, "")
    };
    // no longer reachable: nothing more is queued for it
    shared.outbox.close(Closing::Ended);
    server.inner.registry.remove(id);
    let disconnect = finish(&server, &mut socket, end).await;
    server.inner.counters.closed.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(session = id, ?disconnect, "websocket session closed");
    if let Some(hook) = &server.inner.parts.on_disconnect {
        hook(session, disconnect).await;
    }
}

/// Reads, handles (one message at a time), writes what is queued, pings, until the
/// session ends.
async fn serve_session<S: Send + Sync + 'static>(
    server: &WsServer<S>,
    session: &Session<S>,
    socket: &mut WebSocket,
) -> End {
    let config = &server.inner.parts.config;
    let outbox = &session.shared.outbox;
    let mut pings =
        tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut handling: Option<BoxFuture<'static, Result<Handled, String>>> = None;
    loop {
        // read before writing what is queued: a frame accepted before a close request is
        // written before the Close
        let closing = outbox.closing();
        if closing == Some(Closing::TooSlow) {
            return End::Server(close::POLICY, "too slow");
        }
        if let Err(end) = flush(server, session, socket).await {
            return end;
        }
        let (code, reason) = match closing {
            None => (0, ""),
            Some(Closing::Asked | Closing::Ended) => (close::NORMAL, ""),
            Some(Closing::Shutdown) => (close::GOING_AWAY, "server shutting down"),
            Some(Closing::TooSlow) => return End::Server(close::POLICY, "too slow"),
        };
        if code != 0 {
            // a handler under way finishes (within close_timeout), and what it queued
            // goes out before the Close
            if let Some(running) = handling.take() {
                if let Ok(outcome) = tokio::time::timeout(config.close_timeout, running).await {
                    let _ = settle(server, session, outcome);
                }
                if let Err(end) = flush(server, session, socket).await {
                    return end;
                }
            }
            return End::Server(code, reason);
        }
        tokio::select! {
            biased;
            // (what is queued is written on the next turn, then the Close)
            () = server.inner.shutdown.cancelled() => {
                outbox.close(Closing::Shutdown);
            }
            () = outbox.ready.notified() => {}
            outcome = poll_handling(&mut handling), if handling.is_some() => {
                handling = None;
                // (pongs are not read while a handler runs)
                heard = Instant::now();
                if let Some(end) = settle(server, session, outcome) {
                    return end;
                }
            }
            incoming = socket.recv(), if handling.is_none() => {
                heard = Instant::now();
                let message = match incoming {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::debug!(session = session.id(), %error, "websocket read failed");
                        // over `max_message_bytes` (the socket's own check), else a
                        // protocol violation: said in a Close where the socket still can
                        // (axum hides tungstenite's error type: its text tells them apart)
                        let text = error.to_string();
                        return if text.contains("Space limit exceeded") {
                            End::Server(close::TOO_BIG, "message too big")
                        } else if text.contains("UTF-8") {
                            End::Server(close::INVALID_DATA, "invalid UTF-8")
                        } else if text.contains("Connection reset")
                            || text.contains("closed")
                            || text.contains("IO error")
                        {
                            End::Client(None, text)
                        } else {
                            End::Server(close::PROTOCOL, "protocol error")
                        };
                    }
                    None => return End::Client(None, String::new()),
                };
                match route(server, session, message) {
                    Route::Handle(call) => handling = Some(call),
                    Route::Skip => {}
                    Route::End(end) => return end,
                }
            }
            _ = pings.tick() => {
                if heard.elapsed() > config.idle_timeout {
                    server.inner.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(session = session.id(), "websocket session idle past idle_timeout; closing");
                    return End::Server(close::GOING_AWAY, "idle");
                }
                if let Err(end) = write(server, session, socket, Outgoing::Ping(Bytes::new())).await {
                    return end;
                }
            }
        }
    }
}

/// Writes what the outbox holds, until it is empty (a push during a write is not left
/// waiting for the next wake-up).
async fn flush<S: Send + Sync + 'static>(
    server: &WsServer<S>,
    session: &Session<S>,
    socket: &mut WebSocket,
) -> Result<(), End> {
    loop {
        let frames = session.shared.outbox.take();
        if frames.is_empty() {
            return Ok(());
        }
        for frame in frames {
            write(server, session, socket, frame).await?;
        }
    }
}

/// What a received frame leads to.
enum Route {
    /// A handler's (or the fallback's) call.
    Handle(BoxFuture<'static, Result<Handled, String>>),
    /// Nothing more (a pong, a bad frame answered with an error frame).
    Skip,
    End(End),
}

/// The handler for `message`: by its type, else the fallback, else the bad-frame policy.
fn route<S: Send + Sync + 'static>(
    server: &WsServer<S>,
    session: &Session<S>,
    message: Outgoing,
) -> Route {
    let parts = &server.inner.parts;
    let (decoded, raw) = match message {
        Outgoing::Binary(bytes) => (frame::decode_binary(&bytes), RawFrame::Binary(bytes)),
        Outgoing::Text(text) => (
            frame::decode_text(parts.config.framing, text.as_str()),
            RawFrame::Text(text.as_str().to_string()),
        ),
        Outgoing::Close(frame) => {
            return Route::End(End::Client(
                frame.as_ref().map(|f| f.code),
                frame.map(|f| f.reason.to_string()).unwrap_or_default(),
            ));
        }
        // pings are answered by the socket itself; a pong is a sign of life
        Outgoing::Ping(_) | Outgoing::Pong(_) => return Route::Skip,
    };
    let bad = match decoded {
        Ok((kind, payload)) => match parts.handlers.get(&kind) {
            Some(handler) => {
                server
                    .inner
                    .counters
                    .received
                    .fetch_add(1, Ordering::Relaxed);
                return Route::Handle(call(handler(payload, session.clone())));
            }
            None => BadFrame::UnknownType(kind),
        },
        Err(error) => BadFrame::Malformed(error),
    };
    if let Some(fallback) = &parts.fallback {
        server
            .inner
            .counters
            .received
            .fetch_add(1, Ordering::Relaxed);
        return Route::Handle(call(fallback(raw, session.clone())));
    }
    match bad_frame(server, session, bad) {
        Some(end) => Route::End(end),
        None => Route::Skip,
    }
}

/// The handler's call in progress, if there is one (never ready when there is none).
fn poll_handling<'a>(
    handling: &'a mut Option<BoxFuture<'static, Result<Handled, String>>>,
) -> impl std::future::Future<Output = Result<Handled, String>> + 'a {
    std::future::poll_fn(move |cx| match handling {
        Some(future) => future.as_mut().poll(cx),
        None => std::task::Poll::Pending,
    })
}

/// A handler's call, its panic caught.
fn call(future: BoxFuture<'static, Handled>) -> BoxFuture<'static, Result<Handled, String>> {
    Box::pin(AssertUnwindSafe(future).catch_unwind().map(|result| {
        result.map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string())
        })
    }))
}

/// Acts on a handler's outcome; `Some` when the session must end.
fn settle<S: Send + Sync + 'static>(
    server: &WsServer<S>,
    session: &Session<S>,
    outcome: Result<Handled, String>,
) -> Option<End> {
    let counters = &server.inner.counters;
    match outcome {
        Ok(Handled::Done(None)) => None,
        Ok(Handled::Done(Some(Reply { kind, payload }))) => {
            let framed = payload
                .map_err(WsError::from)
                .and_then(|payload: Bytes| server.frame(kind, &payload));
            match framed {
                Ok(frame) => {
                    let _ = server.push(&session.shared, frame);
                }
                Err(error) => {
                    counters.handler_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(session = session.id(), %error, "websocket reply could not be sent");
                }
            }
            None
        }
        Ok(Handled::Undecodable(error)) => {
            bad_frame(server, session, BadFrame::Undecodable(error.to_string()))
        }
        Ok(Handled::Failed(error)) => {
            handler_failed(server, session, &error.to_string(), "handler");
            None
        }
        Err(panic) => {
            handler_failed(
                server,
                session,
                &format!("handler panicked: {panic}"),
                "panic",
            );
            None
        }
    }
}

fn handler_failed<S: Send + Sync + 'static>(
    server: &WsServer<S>,
    session: &Session<S>,
    error: &str,
    kind: &str,
) {
    server
        .inner
        .counters
        .handler_errors
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(session = session.id(), error, "websocket handler failed");
    if server.inner.parts.config.handler_error_frames {
        send_error(server, session, kind, error);
    }
}

enum BadFrame {
    Malformed(FrameError),
    UnknownType(u32),
    Undecodable(String),
}

/// Logs, counts and answers a frame that is not a message a handler takes; `Some` when
/// the policy closes the session.
fn bad_frame<S: Send + Sync + 'static>(
    server: &WsServer<S>,
    session: &Session<S>,
    bad: BadFrame,
) -> Option<End> {
    let counters = &server.inner.counters;
    let (kind, error, code) = match bad {
        BadFrame::Malformed(error) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            ("malformed", error.to_string(), close::INVALID_DATA)
        }
        BadFrame::UnknownType(kind) => {
            counters.unknown_type.fetch_add(1, Ordering::Relaxed);
            (
                "unknown-type",
                format!("no handler takes message type {kind}"),
                close::UNSUPPORTED,
            )
        }
        BadFrame::Undecodable(error) => {
            counters.undecodable.fetch_add(1, Ordering::Relaxed);
            ("undecodable", error, close::INVALID_DATA)
        }
    };
    tracing::warn!(session = session.id(), kind, %error, "websocket frame refused");
    match server.inner.parts.config.bad_frames {
        BadFramePolicy::ErrorFrame => {
            send_error(server, session, kind, &error);
            None
        }
        BadFramePolicy::Close => Some(End::Server(
            code,
            match code {
                close::UNSUPPORTED => "unknown message type",
                _ => "malformed message",
            },
        )),
    }
}

/// An error frame (type 0, `{"error":..,"kind":..}`) to `session`.
fn send_error<S: Send + Sync + 'static>(
    server: &WsServer<S>,
    session: &Session<S>,
    kind: &str,
    error: &str,
) {
    let payload = serde_json::json!({ "error": error, "kind": kind }).to_string();
    if let Ok(frame) = server.frame(ERROR_TYPE, payload.as_bytes()) {
        let _ = server.push(&session.shared, frame);
    }
}

/// Writes one frame, within `limit`; a write that fails or stalls ends the session.
async fn write<S: Send + Sync + 'static>(
    server: &WsServer<S>,
    session: &Session<S>,
    socket: &mut WebSocket,
    frame: Outgoing,
) -> Result<(), End> {
    let outbox = &session.shared.outbox;
    let config = &server.inner.parts.config;
    // a write blocked on a peer that does not read must not outlast the session: cut
    // off as too slow, it ends at once; at shutdown, after `close_timeout`
    let cut_off = async {
        let shutdown_passed = async {
            server.inner.shutdown.cancelled().await;
            tokio::time::sleep(config.close_timeout).await;
        };
        tokio::pin!(shutdown_passed);
        loop {
            if outbox.closing() == Some(Closing::TooSlow) {
                return End::Server(close::POLICY, "too slow");
            }
            tokio::select! {
                () = outbox.ready.notified() => {}
                () = &mut shutdown_passed => {
                    return End::Server(close::GOING_AWAY, "server shutting down");
                }
            }
        }
    };
    tokio::select! {
        sent = tokio::time::timeout(config.idle_timeout, socket.send(frame)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(End::Client(None, error.to_string())),
            Err(_) => {
                server.inner.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                Err(End::Server(close::INTERNAL, "write stalled"))
            }
        },
        end = cut_off => {
            // (a `notified` consumed here was for this closing, or is seen again below)
            outbox.ready.notify_one();
            Err(end)
        }
    }
}

/// Completes the close handshake: sends the server's Close where the server ends it,
/// then reads until the peer's Close and the end of the connection (or `close_timeout`).
async fn finish<S: Send + Sync + 'static>(
    server: &WsServer<S>,
    socket: &mut WebSocket,
    end: End,
) -> Disconnect {
    let timeout = server.inner.parts.config.close_timeout;
    let disconnect = match end {
        End::Client(code, reason) => Disconnect {
            code,
            reason,
            by_server: false,
        },
        End::Server(code, reason) => {
            let frame = Outgoing::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(timeout, socket.send(frame)).await;
            Disconnect {
                code: Some(code),
                reason: reason.to_string(),
                by_server: true,
            }
        }
    };
    // the socket answers a client's Close itself; reading on lets that answer (and the
    // end of the connection) happen
    let _ = tokio::time::timeout(timeout, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
    disconnect
}
