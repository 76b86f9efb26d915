//! Redis pub/sub (`kind = "redis"`): a topic is a channel; there are no groups (every
//! subscriber gets every message) and nothing is kept (at-most-once).
//!
//! Wire format: the message body is the payload as the codec encoded it, nothing else:
//! pub/sub carries no headers or keys, so `redis-cli PUBLISH sensor.readings '{...}'`
//! reaches a typed subscriber, and what the framework publishes reads as plain JSON.
//! Headers and keys are dropped on publish; use `redis-streams` to keep them.
//!
//! Publishing goes through redis-rs's `ConnectionManager` (it reconnects by itself).
//! Subscriptions share one RESP3 connection whose pushed messages are routed on the
//! connection's own task, straight into the subscriptions' queues (the manager would add
//! a task of its own between the two); when it drops, the backend makes it again with
//! backoff and subscribes again to every channel.
//!
//! Each subscription has a queue of its own, `prefetch` messages long. Pushed messages
//! are handed to it without waiting: when a subscription's handlers fall behind and its
//! queue is full, further messages for it are dropped (pub/sub is at-most-once anyway),
//! counted, and reported in a warning at most every 10 s; the other
//! subscriptions of the process never wait for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::mpsc;

use super::dropped::Drops;
use super::name_hash::NameMap;
use super::{
    Backend, Capabilities, Delivery, Publish, Subscription, SubscriptionSpec, operation_error,
};
use crate::config::BrokerConfig;
use crate::error::BackendError;
use crate::message::Message;

const KIND: &str = "redis";
/// How long a command may wait for its reply.
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Where Redis listens when `broker.url` is not set.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Subscriptions by channel, looked up for every message (hashed a word at a time: the
/// channels are the ones this process subscribed to, and only their messages come).
type Routes = Arc<Mutex<NameMap<Vec<Route>>>>;

/// One local subscription of a channel: its bounded queue and what it had to drop.
struct Route {
    queue: mpsc::Sender<Delivery>,
    subscriber: Arc<str>,
    dropped: Drops,
}

impl Route {
    /// Hands `message` over without waiting; a full queue drops it (counted, warned about
    /// at most every 10 s: `dropped::WARNING_INTERVAL`).
    fn offer(&mut self, channel: &str, message: Message) {
        match self.queue.try_send(Delivery::unacknowledged(message)) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(due) = self.dropped.one() {
                    tracing::warn!(
                        backend = KIND,
                        channel,
                        subscriber = %self.subscriber,
                        dropped = due.dropped,
                        dropped_total = due.total,
                        capacity = self.queue.max_capacity(),
                        "subscriber too slow: its queue is full, messages dropped (at-most-once)"
                    );
                }
            }
        }
    }
}

/// The URL as errors show it (never with its password) and a client for it, speaking
/// RESP3 when `resp3` (pushed messages need it).
fn client(
    config: &BrokerConfig,
    kind: &'static str,
    resp3: bool,
) -> Result<(redis::Client, String), BackendError> {
    let url = config.url.as_deref().unwrap_or(DEFAULT_URL);
    // The error's `url` is public: it never holds the password.
    let shown = crate::redact::redact_url(url);
    let connect_error = |reason: String| connect_error(kind, &shown, reason);
    let mut info = url
        .into_connection_info()
        .map_err(|e| connect_error(e.to_string()))?;
    if resp3 {
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info).map_err(|e| connect_error(e.to_string()))?;
    Ok((client, shown))
}

fn connect_error(kind: &'static str, shown: &str, reason: String) -> BackendError {
    BackendError::Connect {
        backend: kind,
        url: shown.to_string(),
        reason,
    }
}

/// Opens a connection manager to `config.url`, failing fast when Redis is unreachable;
/// afterwards it reconnects by itself.
pub(crate) async fn connect_manager(
    config: &BrokerConfig,
    kind: &'static str,
) -> Result<ConnectionManager, BackendError> {
    let (client, shown) = client(config, kind, false)?;
    let connect_error = |reason: String| connect_error(kind, &shown, reason);
    // Longer than the blocking reads' BLOCK (1 s), short enough that a half-open
    // connection fails commands instead of hanging them.
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    // One plain connection first: it fails at once with the real reason (refused, AUTH,
    // TLS) where the connection manager would retry until the timeout and say only that.
    let probe = tokio::time::timeout(
        config.connect_timeout,
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| connect_error(format!("no connection within {:?}", config.connect_timeout)))?;
    drop(probe.map_err(|e| connect_error(e.to_string()))?);
    tokio::time::timeout(
        config.connect_timeout,
        client.get_connection_manager_with_config(manager_config),
    )
    .await
    .map_err(|_| connect_error(format!("no connection within {:?}", config.connect_timeout)))?
    .map_err(|e| connect_error(e.to_string()))
}

/// Runs `command` through `manager`, and once more if it found the connection closed:
/// the server went away since the connection's last command (a restart, say), and the
/// manager, told so by the failure, has begun a new connection, which the second try
/// waits for. Without it, the first command after every restart of the server fails
/// (go-redis retries such commands by default; redis-rs's manager does not). A command
/// the server had taken just as it closed the connection then runs twice: only across
/// a restart, and rare.
pub(crate) async fn query_reconnecting<T: redis::FromRedisValue>(
    manager: &ConnectionManager,
    command: &redis::Cmd,
) -> redis::RedisResult<T> {
    let mut connection = manager.clone();
    match command.query_async(&mut connection).await {
        Err(error) if error.is_connection_dropped() => command.query_async(&mut connection).await,
        done => done,
    }
}

/// Pause before the first try to connect the subscriber again; doubled after each
/// failed try, up to [`RECONNECT_MAX`].
const RECONNECT: Duration = Duration::from_millis(100);
/// Longest pause between two tries to connect the subscriber again.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The Redis pub/sub backend.
pub struct RedisBackend {
    publisher: ConnectionManager,
    subscriber: Arc<Subscriber>,
    /// The task that replaces the subscriber's connection when it drops; ended with the
    /// backend.
    keeper: tokio::task::JoinHandle<()>,
}

/// The subscribing side: one RESP3 connection whose pushed messages are routed where the
/// connection reads them (its own task, no other hop), made again when it drops.
struct Subscriber {
    dial: Dial,
    /// Whether the live connection is up (false from its loss until one is made again).
    up: AtomicBool,
    /// The live connection (SUBSCRIBE goes through it); held while one is made again, so
    /// a subscription made meanwhile waits for it.
    connection: tokio::sync::Mutex<MultiplexedConnection>,
}

/// What the subscriber's connections are made with, the first and each one after.
struct Dial {
    client: redis::Client,
    connect_timeout: Duration,
    routes: Routes,
    /// Told the number of a connection that dropped.
    lost: mpsc::UnboundedSender<u64>,
}

impl Dial {
    /// Opens connection number `generation` (within the connect timeout), routing what it
    /// is pushed.
    async fn open(&self, generation: u64) -> redis::RedisResult<MultiplexedConnection> {
        let routes = Arc::clone(&self.routes);
        let lost = self.lost.clone();
        let router = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            route_push(&routes, &lost, generation, push);
            Ok(())
        };
        let settings = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(router);
        tokio::time::timeout(
            self.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&settings),
        )
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            )
            .into())
        })
    }
}

impl Subscriber {
    /// Replaces the connection with number `generation`, subscribed to every channel a
    /// local subscription has.
    async fn reopen(&self, generation: u64) -> redis::RedisResult<()> {
        let mut current = self.connection.lock().await;
        let mut connection = self.dial.open(generation).await?;
        let channels: Vec<String> = {
            let routes = self
                .dial
                .routes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            routes.keys().cloned().collect()
        };
        if !channels.is_empty() {
            connection.subscribe(&channels).await?;
        }
        *current = connection;
        Ok(())
    }
}

/// Makes the subscriber's connection again each time it drops: tries after [`RECONNECT`],
/// pausing twice as long after each failure (at most [`RECONNECT_MAX`]), until one is up
/// and subscribed to every channel again. Runs until the backend ends it.
async fn keep_connected(subscriber: Arc<Subscriber>, mut lost: mpsc::UnboundedReceiver<u64>) {
    let mut current = 0;
    while let Some(generation) = lost.recv().await {
        if generation != current {
            // a connection already replaced
            continue;
        }
        subscriber.up.store(false, Ordering::Release);
        tracing::warn!(
            backend = KIND,
            "disconnected; reconnecting and resubscribing"
        );
        let mut wait = RECONNECT;
        loop {
            tokio::time::sleep(wait).await;
            current += 1;
            match subscriber.reopen(current).await {
                Ok(()) => break,
                Err(error) => {
                    wait = (wait * 2).min(RECONNECT_MAX);
                    tracing::warn!(backend = KIND, %error, retry_in = ?wait, "reconnecting failed");
                }
            }
        }
        subscriber.up.store(true, Ordering::Release);
        crate::metrics::reconnected(KIND);
        tracing::info!(backend = KIND, "connected again; subscriptions restored");
    }
}

impl RedisBackend {
    /// Connects to `config.url`.
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let publisher = connect_manager(config, KIND).await?;
        let (client, shown) = client(config, KIND, true)?;
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let dial = Dial {
            client,
            connect_timeout: config.connect_timeout,
            routes: Routes::default(),
            lost,
        };
        let connection = dial
            .open(0)
            .await
            .map_err(|e| connect_error(KIND, &shown, e.to_string()))?;
        let subscriber = Arc::new(Subscriber {
            dial,
            up: AtomicBool::new(true),
            connection: tokio::sync::Mutex::new(connection),
        });
        let keeper = tokio::spawn(keep_connected(Arc::clone(&subscriber), lost_rx));
        Ok(RedisBackend {
            publisher,
            subscriber,
            keeper,
        })
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Hands a pushed message to every local subscription of its channel, never waiting
/// (this runs on the connection's own task); tells `lost` when connection `generation`
/// dropped.
fn route_push(routes: &Routes, lost: &mpsc::UnboundedSender<u64>, generation: u64, push: PushInfo) {
    match push.kind {
        PushKind::Message => {
            let mut data = push.data.into_iter();
            let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                return;
            };
            let (Some(channel), Some(payload)) = (bytes_of(channel), bytes_of(payload)) else {
                return;
            };
            let channel = super::text(&channel);
            let payload = Bytes::from(payload);
            let mut routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((last, others)) = routes
                .get_mut(&*channel)
                .and_then(|targets| targets.split_last_mut())
            {
                for target in others {
                    target.offer(&channel, Message::new(payload.clone()));
                }
                // the last (usually only) one takes the payload itself: a clone would
                // allocate the count the clones share
                last.offer(&channel, Message::new(payload));
            }
        }
        PushKind::Disconnection => {
            // the backend's keeper makes the connection again (unless it has ended)
            let _ = lost.send(generation);
        }
        _ => {}
    }
}

fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: false,
            persistence: false,
            ordering: true,
            at_least_once: false,
            native_redelivery: false,
            headers: false,
            keys: false,
        }
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        Publish::boxed(async move {
            let mut command = redis::cmd("PUBLISH");
            command.arg(topic).arg(&message.payload[..]);
            query_reconnecting::<i64>(&self.publisher, &command)
                .await
                .map(drop)
                .map_err(|e| operation_error(KIND, "publish", e))
        })
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        async move {
            if let Some(group) = &spec.group {
                tracing::warn!(
                    backend = KIND,
                    subscriber = %spec.subscriber,
                    group = %group,
                    "redis pub/sub has no groups: every instance receives every message"
                );
            }
            let (tx, mut rx) = mpsc::channel(spec.prefetch.max(1));
            // held while subscribing, so a connection being made again meanwhile is
            // waited for (and subscribes this channel itself if it is the first)
            let mut connection = self.subscriber.connection.lock().await;
            let first = {
                let mut routes = self
                    .subscriber
                    .dial
                    .routes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let senders = routes.entry(spec.topic.clone()).or_default();
                senders.retain(|s| !s.queue.is_closed());
                senders.push(Route {
                    queue: tx,
                    subscriber: spec.subscriber.as_str().into(),
                    dropped: Drops::new(KIND),
                });
                senders.len() == 1
            };
            if first {
                connection
                    .subscribe(&spec.topic)
                    .await
                    .map_err(|e| operation_error(KIND, "subscribe", e))?;
            }
            Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
        }
        .boxed()
    }

    fn connected(&self) -> bool {
        // the subscriber's connection (the publisher's, to the same server, is made again
        // by its manager when a publish finds it lost)
        self.subscriber.up.load(Ordering::Acquire)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        // no more reconnecting: the App is going
        self.keeper.abort();
        async { Ok(()) }.boxed()
    }
}
