//! A WebSocket server for browsers (feature `websocket`): typed message handlers,
//! sessions with typed state, sends to one session, a room, everyone, or the sessions
//! whose state matches a predicate.
//!
//! Message types are declared once as typed constants, and a handler's payload type is
//! checked against its constant at compile time:
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use transport::ws::{Session, WsConfig, WsMessage, WsServer};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Chat { text: String }
//!
//! const CHAT: WsMessage<Chat> = WsMessage::new(1);
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = WsServer::<()>::builder(WsConfig::default())
//!     .handle(CHAT, |chat: Chat, session: Session<()>| async move {
//!         // every session gets it, this one included
//!         session.server().broadcast(CHAT, &chat).map(drop)
//!     })
//!     .build()?;
//! // mounted in an axum Router of your own, next to REST and static files
//! let app = axum::Router::new().merge(server.router());
//! # let _ = app; Ok(()) }
//! ```
//!
//! Frames, the same for a send and a broadcast: binary `[u32 little-endian type][codec
//! bytes]`, or text `{"type":N,"payload":<JSON>}` ([`Framing`]). Type 0 is the server's
//! own: the error frame (`{"error":"...","kind":"..."}`) a bad frame or a failed handler
//! is answered with under [`BadFramePolicy::ErrorFrame`].

mod frame;
mod server;
mod session;
mod stats;

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::codec::{Codec, Decoder, Encoder, Json};
use crate::error::{CodecError, Error};

/// The `axum` this server is built on, to mount [`WsServer::router`] into a router of
/// your own without matching versions by hand.
pub use axum;
pub use frame::{FrameError, Framing};
pub use server::{Disconnect, Session};
pub use session::{SessionId, SlowConsumer, UpgradeRequest};
pub use stats::WsStats;

/// The message type of the server's error frames (no handler may take it).
pub const ERROR_TYPE: u32 = 0;

/// A message type: its number on the wire, bound to its payload type and codec. Declared
/// once, shared by the handler and every send:
/// `const CHAT: WsMessage<ChatMessage> = WsMessage::new(1);`
pub struct WsMessage<T, C = Json> {
    kind: u32,
    _types: PhantomData<fn() -> (T, C)>,
}

impl<T> WsMessage<T, Json> {
    /// Message type `kind` carrying a `T` as JSON. `0` is the error frame's and does not
    /// compile in a constant.
    pub const fn new(kind: u32) -> Self {
        assert!(
            kind != ERROR_TYPE,
            "WebSocket message type 0 is the server's error frame: number yours from 1"
        );
        WsMessage {
            kind,
            _types: PhantomData,
        }
    }
}

impl<T, C> WsMessage<T, C> {
    /// The same message type with another codec (`msgpack`, `protobuf`, ...).
    pub const fn with_codec<C2: Codec>(self) -> WsMessage<T, C2> {
        WsMessage {
            kind: self.kind,
            _types: PhantomData,
        }
    }

    /// The number on the wire.
    pub const fn kind(&self) -> u32 {
        self.kind
    }

    /// The same number and codec, bound to another payload type (for the generated
    /// glue, after its own check).
    pub(crate) const fn retyped<P>(self) -> WsMessage<P, C> {
        WsMessage {
            kind: self.kind,
            _types: PhantomData,
        }
    }
}

impl<T, C> Clone for WsMessage<T, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, C> Copy for WsMessage<T, C> {}

impl<T, C: Codec> std::fmt::Debug for WsMessage<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsMessage")
            .field("kind", &self.kind)
            .field("payload", &std::any::type_name::<T>())
            .field("codec", &C::NAME)
            .finish()
    }
}

/// What a bad frame (malformed, or of a type no handler takes) is answered with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadFramePolicy {
    /// An error frame (type 0) to the sender; the session goes on.
    #[default]
    ErrorFrame,
    /// Close the session: 1007 for a malformed frame or payload, 1003 for an unknown type.
    Close,
}

/// A WebSocket server's settings (`[websocket]` in the App's config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Where the server listens when it runs on its own (inside an `App`, or
    /// [`WsServer::serve`]); not needed when mounted into a router of yours.
    pub address: Option<SocketAddr>,
    /// The path of the upgrade endpoint.
    pub path: String,
    /// How messages are framed.
    pub framing: Framing,
    /// Origins allowed to open a session (`https://app.example`). Empty: only the
    /// server's own origin (the `Origin` header's host equals `Host`). A request without
    /// `Origin` (not a browser) is allowed. `["*"]` allows every origin.
    pub allowed_origins: Vec<String>,
    /// The largest message (and frame) accepted from a client, in bytes.
    pub max_message_bytes: usize,
    /// Sessions open at once; more are refused with 503.
    pub max_sessions: usize,
    /// Frames queued for one session before `slow_consumer` applies.
    pub outbox: usize,
    /// What a full outbox does.
    pub slow_consumer: SlowConsumer,
    /// What a malformed frame or an unknown type is answered with.
    pub bad_frames: BadFramePolicy,
    /// Whether a handler's error is also sent to its session as an error frame (it is
    /// always logged and counted).
    pub handler_error_frames: bool,
    /// How often the server pings each session.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A session silent this long (no frame, no pong), or a write blocked this long,
    /// is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a close handshake may take, and sessions may take to close at shutdown.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            address: None,
            path: "/ws".to_string(),
            framing: Framing::default(),
            allowed_origins: Vec::new(),
            max_message_bytes: 1 << 20,
            max_sessions: 10_000,
            outbox: 256,
            slow_consumer: SlowConsumer::default(),
            bad_frames: BadFramePolicy::default(),
            handler_error_frames: true,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// What went wrong building a server or sending through it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The server's settings or handlers do not fit together.
    #[error("websocket server: {0}")]
    Config(String),
    /// The value did not encode with its codec.
    #[error(transparent)]
    Encode(#[from] CodecError),
    /// The encoded value does not fit the server's framing.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// No open session has this id.
    #[error("no open session {0}")]
    NoSession(SessionId),
    /// The session is closing (it left, was cut off as a slow consumer, or shutdown began).
    #[error("session {0} is closing")]
    Closing(SessionId),
    /// Listening failed.
    #[error("websocket server on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// An upgrade the authentication hook refused: answered with `status` before any
/// WebSocket exists.
#[derive(Debug, Clone)]
pub struct Rejection {
    status: axum::http::StatusCode,
    reason: String,
}

impl Rejection {
    /// 401: no or bad credentials.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Rejection {
            status: axum::http::StatusCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }

    /// 403: known, and not allowed.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Rejection {
            status: axum::http::StatusCode::FORBIDDEN,
            reason: reason.into(),
        }
    }
}

/// A message a handler sends back to its own session.
#[derive(Debug)]
pub struct Reply {
    kind: u32,
    payload: Result<Bytes, CodecError>,
}

impl Reply {
    /// `value` as message type `message`.
    pub fn new<T, C: Encoder<T>>(message: WsMessage<T, C>, value: &T) -> Self {
        Reply {
            kind: message.kind,
            payload: C::encode(value),
        }
    }
}

/// A `#[transport::service]` type's `#[ws]` methods, for sessions holding an `S`
/// (implemented by the macro; see [`WsServerBuilder::service`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no `#[ws]` handlers for sessions holding `{S}`",
    label = "this server's sessions hold `{S}`",
    note = "`#[ws(message = ...)]` methods inside `#[transport::service]` register a type; theirs take `Session<{S}>` to serve this server"
)]
pub trait WsHandlers<S>: Send + Sync + Sized + 'static {
    /// Registers every handler, each run on `self`.
    fn register(self: Arc<Self>, builder: WsServerBuilder<S>) -> WsServerBuilder<S>;
}

/// What a handler may return: `()`, `Result<(), E>`, a [`Reply`], `Result<Reply, E>`,
/// or `Option<Reply>`, with `E: Into<transport::Error>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a supported return type for a WebSocket handler",
    label = "return `()`, `Result<(), E>`, `Reply`, `Option<Reply>` or `Result<Reply, E>`",
    note = "`E` is anything `Into<transport::Error>`: `transport::Error`, `Box<dyn std::error::Error + Send + Sync>`"
)]
pub trait WsReturn {
    /// The reply to send, or the handler's error.
    fn into_reply(self) -> Result<Option<Reply>, Error>;
}

impl WsReturn for () {
    fn into_reply(self) -> Result<Option<Reply>, Error> {
        Ok(None)
    }
}

impl WsReturn for Reply {
    fn into_reply(self) -> Result<Option<Reply>, Error> {
        Ok(Some(self))
    }
}

impl WsReturn for Option<Reply> {
    fn into_reply(self) -> Result<Option<Reply>, Error> {
        Ok(self)
    }
}

impl<E: Into<Error>> WsReturn for Result<(), E> {
    fn into_reply(self) -> Result<Option<Reply>, Error> {
        self.map(|()| None).map_err(Into::into)
    }
}

impl<E: Into<Error>> WsReturn for Result<Reply, E> {
    fn into_reply(self) -> Result<Option<Reply>, Error> {
        self.map(Some).map_err(Into::into)
    }
}

impl<E: Into<Error>> WsReturn for Result<Option<Reply>, E> {
    fn into_reply(self) -> Result<Option<Reply>, Error> {
        self.map_err(Into::into)
    }
}

/// How a handler's call ended.
pub(crate) enum Handled {
    Done(Option<Reply>),
    Undecodable(CodecError),
    Failed(Error),
}

type HandlerFn<S> = Arc<dyn Fn(Bytes, Session<S>) -> BoxFuture<'static, Handled> + Send + Sync>;
type AuthenticateFn<S> =
    Arc<dyn Fn(UpgradeRequest) -> BoxFuture<'static, Result<S, Rejection>> + Send + Sync>;
type ConnectFn<S> = Arc<dyn Fn(Session<S>) -> BoxFuture<'static, ()> + Send + Sync>;
type DisconnectFn<S> = Arc<dyn Fn(Session<S>, Disconnect) -> BoxFuture<'static, ()> + Send + Sync>;

/// A frame as it came, for the [`fallback`](WsServerBuilder::fallback) handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

type FallbackFn<S> = Arc<dyn Fn(RawFrame, Session<S>) -> BoxFuture<'static, Handled> + Send + Sync>;

/// A registered handler: its codec (the text framings need JSON) and its glue.
struct Handler<S> {
    codec: &'static str,
    call: HandlerFn<S>,
}

/// Builds a [`WsServer`]: handlers by message type, hooks, then [`build`](Self::build).
pub struct WsServerBuilder<S> {
    config: WsConfig,
    handlers: std::collections::HashMap<u32, Handler<S>>,
    duplicates: Vec<u32>,
    authenticate: AuthenticateFn<S>,
    on_connect: Option<ConnectFn<S>>,
    on_disconnect: Option<DisconnectFn<S>>,
    fallback: Option<FallbackFn<S>>,
}

impl<S: Send + Sync + 'static> WsServer<S> {
    /// A builder whose sessions start with `S::default()` (see
    /// [`authenticate`](WsServerBuilder::authenticate) to decide the state, or refuse,
    /// from the upgrade request).
    pub fn builder(config: WsConfig) -> WsServerBuilder<S>
    where
        S: Default,
    {
        Self::builder_with(config, |_request| async { Ok(S::default()) })
    }

    /// A builder whose sessions' state comes from `authenticate`, called with each
    /// upgrade request before any WebSocket exists (headers, query, cookies): `Ok(state)`
    /// opens the session, a [`Rejection`] answers the request with its status.
    pub fn builder_with<F, Fut>(config: WsConfig, authenticate: F) -> WsServerBuilder<S>
    where
        F: Fn(UpgradeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, Rejection>> + Send + 'static,
    {
        WsServerBuilder {
            config,
            handlers: Default::default(),
            duplicates: Vec::new(),
            authenticate: Arc::new(move |request| Box::pin(authenticate(request))),
            on_connect: None,
            on_disconnect: None,
            fallback: None,
        }
    }
}

impl<S: Send + Sync + 'static> WsServerBuilder<S> {
    /// Handles message type `message` with `handler`, which takes the decoded payload
    /// (its type is the constant's: anything else does not compile) and the session.
    /// One message of a session is handled at a time, in order.
    pub fn handle<T, C, F, Fut, R>(mut self, message: WsMessage<T, C>, handler: F) -> Self
    where
        T: Send + 'static,
        C: Decoder<T> + 'static,
        F: Fn(T, Session<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: WsReturn,
    {
        let handler = Arc::new(handler);
        let call: HandlerFn<S> = Arc::new(move |payload: Bytes, session: Session<S>| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                match C::decode(&payload) {
                    Ok(value) => match handler(value, session).await.into_reply() {
                        Ok(reply) => Handled::Done(reply),
                        Err(error) => Handled::Failed(error),
                    },
                    Err(error) => Handled::Undecodable(error),
                }
            })
        });
        let entry = Handler {
            codec: C::NAME,
            call,
        };
        if self.handlers.insert(message.kind, entry).is_some() {
            self.duplicates.push(message.kind);
        }
        self
    }

    /// Takes every frame no typed handler takes (not a message of this server's framing,
    /// or of a type without a handler), as it came, instead of answering it as a bad
    /// frame: for a protocol of your own next to the typed messages, or an echo.
    pub fn fallback<F, Fut, R>(mut self, handler: F) -> Self
    where
        F: Fn(RawFrame, Session<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: WsReturn,
    {
        let handler = Arc::new(handler);
        self.fallback = Some(Arc::new(move |frame, session| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                match handler(frame, session).await.into_reply() {
                    Ok(reply) => Handled::Done(reply),
                    Err(error) => Handled::Failed(error),
                }
            })
        }));
        self
    }

    /// Registers every `#[ws(message = ...)]` method of a `#[transport::service]` type,
    /// each run on `instance`:
    ///
    /// ```
    /// # use serde::Deserialize;
    /// use transport::ws::{Reply, Session, WsConfig, WsMessage, WsServer};
    /// # #[derive(serde::Serialize, Deserialize)] pub struct Chat { text: String }
    /// const CHAT: WsMessage<Chat> = WsMessage::new(1);
    ///
    /// pub struct Room;
    ///
    /// #[transport::service]
    /// impl Room {
    ///     #[ws(message = CHAT)]
    ///     async fn chat(&self, chat: Chat, session: Session<()>) -> Result<(), transport::ws::WsError> {
    ///         session.server().broadcast(CHAT, &chat).map(drop)
    ///     }
    /// }
    ///
    /// let server = WsServer::<()>::builder(WsConfig::default()).service(Room).build();
    /// # let _ = server;
    /// ```
    pub fn service<T: WsHandlers<S>>(self, instance: T) -> Self {
        self.service_arc(Arc::new(instance))
    }

    /// Like [`service`](Self::service), for an instance shared with other code (its
    /// hooks, a broker subscriber).
    pub fn service_arc<T: WsHandlers<S>>(self, instance: Arc<T>) -> Self {
        instance.register(self)
    }

    /// Replaces how a session's state is made from its upgrade request (or refused).
    pub fn authenticate<F, Fut>(mut self, authenticate: F) -> Self
    where
        F: Fn(UpgradeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, Rejection>> + Send + 'static,
    {
        self.authenticate = Arc::new(move |request| Box::pin(authenticate(request)));
        self
    }

    /// Runs when a session opens: it is registered already, so a send or broadcast from
    /// here (or anywhere) reaches it. Its messages are read once this returns.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Session<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |session| Box::pin(hook(session))));
        self
    }

    /// Runs when a session has ended, however it ended; it is no longer registered.
    pub fn on_disconnect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Session<S>, Disconnect) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_disconnect = Some(Arc::new(move |session, why| Box::pin(hook(session, why))));
        self
    }

    /// The server, once its settings and handlers are checked: every problem at once.
    pub fn build(self) -> Result<WsServer<S>, WsError> {
        let mut problems = Vec::new();
        for kind in &self.duplicates {
            problems.push(format!("message type {kind} has two handlers"));
        }
        if self.config.framing != Framing::Binary {
            let mut kinds: Vec<_> = self
                .handlers
                .iter()
                .filter(|(_, handler)| handler.codec != Json::NAME)
                .map(|(kind, handler)| format!("{kind} ({})", handler.codec))
                .collect();
            kinds.sort();
            if !kinds.is_empty() {
                problems.push(format!(
                    "the {:?} framing carries JSON only, and message types {} use another codec (use `framing = \"binary\"`)",
                    self.config.framing,
                    kinds.join(", ")
                ));
            }
        }
        if self.config.idle_timeout <= self.config.ping_interval {
            problems.push(format!(
                "idle_timeout ({:?}) must be longer than ping_interval ({:?}): a quiet client answering pings would be closed",
                self.config.idle_timeout, self.config.ping_interval
            ));
        }
        if !self.config.path.starts_with('/') {
            problems.push(format!("path `{}` must start with `/`", self.config.path));
        }
        for (name, value) in [
            ("max_message_bytes", self.config.max_message_bytes),
            ("max_sessions", self.config.max_sessions),
            ("outbox", self.config.outbox),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        for (name, value) in [
            ("ping_interval", self.config.ping_interval),
            ("idle_timeout", self.config.idle_timeout),
            ("close_timeout", self.config.close_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("{name} must be longer than zero"));
            }
        }
        if !problems.is_empty() {
            return Err(WsError::Config(problems.join("; ")));
        }
        Ok(WsServer::from_parts(server::Parts {
            config: self.config,
            handlers: self
                .handlers
                .into_iter()
                .map(|(kind, handler)| (kind, handler.call))
                .collect(),
            authenticate: self.authenticate,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
            fallback: self.fallback,
        }))
    }
}

pub use server::WsServer;

/// A bound server's serving: runs until [`WsServer::shutdown`].
pub type Serving = BoxFuture<'static, Result<(), WsError>>;

/// A server an [`App`](crate::App) runs: bound at start, shut down with it.
pub(crate) trait Served: Send + Sync {
    /// Binds the server's address; the bound one and the serving future.
    fn bind(&self) -> BoxFuture<'_, Result<(SocketAddr, Serving), WsError>>;
    /// Closes every session (1001) and waits for them, within `close_timeout`.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

impl<S: Send + Sync + 'static> Served for WsServer<S> {
    fn bind(&self) -> BoxFuture<'_, Result<(SocketAddr, Serving), WsError>> {
        Box::pin(WsServer::bind(self))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(WsServer::shutdown(self))
    }
}
