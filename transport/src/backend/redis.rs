//! Redis pub/sub (`kind = "redis"`): a topic is a channel; there are no groups (every
//! subscriber gets every message) and nothing is kept (at-most-once).
//!
//! Wire format: the message body is the payload as the codec encoded it, nothing else:
//! pub/sub carries no headers or keys, so `redis-cli PUBLISH sensor.readings '{...}'`
//! reaches a typed subscriber, and what the framework publishes reads as plain JSON.
//! Headers and keys are dropped on publish; use `redis-streams` to keep them.
//!
//! Subscriptions share one RESP3 connection managed by redis-rs's `ConnectionManager`,
//! which reconnects with backoff and subscribes again to every channel by itself.
//!
//! Each subscription has a queue of its own, `prefetch` messages long. Pushed messages
//! are handed to it without waiting: when a subscription's handlers fall behind and its
//! queue is full, further messages for it are dropped (pub/sub is at-most-once anyway),
//! counted, and reported in a warning at most every [`DROP_WARNING_INTERVAL`]; the other
//! subscriptions of the process never wait for it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{AsyncPushSender, ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

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

/// Shortest time between two warnings about one subscription's dropped messages.
pub const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Subscriptions by channel, looked up for every message (hashed a word at a time: the
/// channels are the ones this process subscribed to, and only their messages come).
type Routes = Arc<Mutex<NameMap<Vec<Route>>>>;

/// One local subscription of a channel: its bounded queue and what it had to drop.
struct Route {
    queue: mpsc::Sender<Delivery>,
    subscriber: Arc<str>,
    dropped: Drops,
}

/// Messages a subscription dropped because its queue was full.
#[derive(Default)]
struct Drops {
    total: u64,
    unreported: u64,
    last_warning: Option<Instant>,
}

impl Route {
    /// Hands `message` over without waiting; a full queue drops it (counted, warned about
    /// at most every [`DROP_WARNING_INTERVAL`]).
    fn offer(&mut self, channel: &str, message: Message) {
        match self.queue.try_send(Delivery::unacknowledged(message)) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let drops = &mut self.dropped;
                drops.total += 1;
                drops.unreported += 1;
                let due = drops
                    .last_warning
                    .is_none_or(|at| at.elapsed() >= DROP_WARNING_INTERVAL);
                if due {
                    tracing::warn!(
                        backend = KIND,
                        channel,
                        subscriber = %self.subscriber,
                        dropped = drops.unreported,
                        dropped_total = drops.total,
                        capacity = self.queue.max_capacity(),
                        "subscriber too slow: its queue is full, messages dropped (at-most-once)"
                    );
                    drops.unreported = 0;
                    drops.last_warning = Some(Instant::now());
                }
            }
        }
    }
}

/// Opens a connection manager to `config.url` (RESP3 when `resp3`), failing fast when
/// Redis is unreachable; afterwards it reconnects by itself.
pub(crate) async fn connect_manager(
    config: &BrokerConfig,
    kind: &'static str,
    push: Option<Arc<dyn AsyncPushSender>>,
) -> Result<(redis::Client, ConnectionManager), BackendError> {
    let url = config
        .url
        .clone()
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    // The error's `url` is public: it never holds the password.
    let shown = crate::redact::redact_url(&url);
    let connect_error = |reason: String| BackendError::Connect {
        backend: kind,
        url: shown.clone(),
        reason,
    };
    let mut info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| connect_error(e.to_string()))?;
    // Longer than the blocking reads' BLOCK (1 s), short enough that a half-open
    // connection fails commands instead of hanging them.
    let mut manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    if let Some(push) = push {
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        info = info.set_redis_settings(settings);
        manager_config = manager_config
            .set_push_sender(push)
            .set_automatic_resubscription();
    }
    let client = redis::Client::open(info).map_err(|e| connect_error(e.to_string()))?;
    // One plain connection first: it fails at once with the real reason (refused, AUTH,
    // TLS) where the connection manager would retry until the timeout and say only that.
    let probe = tokio::time::timeout(
        config.connect_timeout,
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| connect_error(format!("no connection within {:?}", config.connect_timeout)))?;
    drop(probe.map_err(|e| connect_error(e.to_string()))?);
    let manager = tokio::time::timeout(
        config.connect_timeout,
        client.get_connection_manager_with_config(manager_config),
    )
    .await
    .map_err(|_| connect_error(format!("no connection within {:?}", config.connect_timeout)))?
    .map_err(|e| connect_error(e.to_string()))?;
    Ok((client, manager))
}

/// The Redis pub/sub backend.
pub struct RedisBackend {
    publisher: ConnectionManager,
    subscriber: ConnectionManager,
    routes: Routes,
}

impl RedisBackend {
    /// Connects to `config.url`.
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let (_, publisher) = connect_manager(config, KIND, None).await?;
        let routes: Routes = Arc::default();
        let router = {
            let routes = Arc::clone(&routes);
            move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                route_push(&routes, push);
                Ok(())
            }
        };
        let (_, subscriber) = connect_manager(config, KIND, Some(Arc::new(router))).await?;
        Ok(RedisBackend {
            publisher,
            subscriber,
            routes,
        })
    }
}

/// Hands a pushed message to every local subscription of its channel, never waiting
/// (this runs on the connection's own task).
fn route_push(routes: &Routes, push: PushInfo) {
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
            if let Some(targets) = routes.get_mut(&*channel) {
                for target in targets {
                    target.offer(&channel, Message::new(payload.clone()));
                }
            }
        }
        PushKind::Disconnection => {
            // the connection manager reconnects and resubscribes by itself
            crate::metrics::reconnected(KIND);
            tracing::warn!(
                backend = KIND,
                "disconnected; reconnecting and resubscribing"
            )
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
            let mut connection = self.publisher.clone();
            redis::cmd("PUBLISH")
                .arg(topic)
                .arg(&message.payload[..])
                .query_async::<i64>(&mut connection)
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
            let first = {
                let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
                let senders = routes.entry(spec.topic.clone()).or_default();
                senders.retain(|s| !s.queue.is_closed());
                senders.push(Route {
                    queue: tx,
                    subscriber: spec.subscriber.as_str().into(),
                    dropped: Drops::default(),
                });
                senders.len() == 1
            };
            if first {
                let mut connection = self.subscriber.clone();
                connection
                    .subscribe(&spec.topic)
                    .await
                    .map_err(|e| operation_error(KIND, "subscribe", e))?;
            }
            Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async { Ok(()) }.boxed()
    }
}
