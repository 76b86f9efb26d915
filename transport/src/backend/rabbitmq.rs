//! RabbitMQ (AMQP 0-9-1, through `lapin`).
//!
//! - Topology: one durable topic exchange (`broker.rabbitmq.exchange`, default
//!   `transport`); the topic is the routing key. A group is a durable queue
//!   `<topic>#<group>` bound to it and shared by the group's members (competing
//!   consumers); no group is an exclusive, auto-delete, server-named queue per subscriber
//!   (fan-out). Several groups on one topic each get every message. `quorum = true`
//!   declares group queues as quorum queues.
//! - Delivery: `basic.qos` prefetch from the subscriber's `prefetch`, manual acks (one
//!   `multiple` ack for a run of consecutive tags), settled by a task per subscription.
//! - Retry: a nacked message is published again, with its next attempt number in the
//!   `x-transport-attempt` header, to a delay queue `transport.retry.<ms>.<queue>` whose TTL
//!   dead-letters it back to its queue (one delay queue per delay, so a long delay never
//!   holds a short one back; unused ones expire), then the original is acked. Nothing
//!   behind it waits. The republish is confirmed before the ack; while it fails it is
//!   tried again with backoff (the original unacked, coming back with its channel if that
//!   goes).
//! - Publish: publisher confirms (a publish returns after the broker's ack); `mandatory`
//!   (config) makes an unroutable message an error. Headers travel as AMQP headers
//!   (strings); content type, message id, correlation id and reply-to as properties; the
//!   key as the `x-transport-key` header.
//! - Recovery: a lost connection ends the subscriptions (the dispatcher subscribes again,
//!   with backoff, on a new connection); acks for a dead channel's delivery tags are never
//!   sent on another channel (their messages come back by themselves).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::mpsc;

use super::{
    Backend, Capabilities, Delivery, Publish, Settle, Subscription, SubscriptionSpec,
    operation_error,
};
use crate::config::{BrokerConfig, RabbitMqConfig};
use crate::error::BackendError;
use crate::message::{CONTENT_TYPE, Headers, Message};
use crate::publisher::CORRELATION_ID;

const KIND: &str = "rabbitmq";
const DEFAULT_URL: &str = "amqp://127.0.0.1:5672/%2f";
/// Header carrying the message key.
pub const KEY_HEADER: &str = "x-transport-key";
/// Header carrying the attempt number of a message published again for a retry.
pub const ATTEMPT_HEADER: &str = "x-transport-attempt";
/// AMQP queue names are short strings (255 bytes); a group queue's name leaves room for
/// its delay queues' prefix (`transport.retry.<ms>.`).
const MAX_NAME_BYTES: usize = 255 - 37;
/// The consumer tag of every subscription (each consumes on a channel of its own, where
/// the tag need only be unique). Short on purpose: lapin parses it from every delivery
/// and hashes it several times per delivery; the server's 31-byte `amq.ctag-...` cost
/// ~600 instructions a message more than this (counted).
const CONSUMER_TAG: &str = "sub";
/// How long the settle task lets acks gather before sending them.
const ACK_COALESCE: Duration = Duration::from_millis(1);
/// How long `close` waits for the settle tasks to send what they hold.
const SETTLE_FLUSH: Duration = Duration::from_secs(5);
/// An unused delay queue is deleted by the broker this long after its delay.
const DELAY_QUEUE_IDLE: Duration = Duration::from_secs(60);

/// A RabbitMQ connection for publishing, subscribing and settling.
pub struct RabbitMqBackend {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    settings: RabbitMqConfig,
    connect_timeout: Duration,
    /// The connection and its confirm-mode publishing channel; replaced when it dies.
    link: tokio::sync::Mutex<Option<Link>>,
    /// The subscriptions' settle tasks, awaited by `close` so that their acks are sent
    /// before the connection goes.
    settlers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The connection `link` holds, for telling whether it is up without waiting for a
    /// reconnection in progress.
    current: std::sync::Mutex<Option<Arc<Connection>>>,
}

#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publish: Channel,
}

impl Link {
    fn alive(&self) -> bool {
        self.connection.status().connected() && self.publish.status().connected()
    }
}

impl RabbitMqBackend {
    /// Connects (within `broker.connect_timeout`) and declares the exchange.
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let inner = Arc::new(Inner {
            url: config
                .url
                .clone()
                .unwrap_or_else(|| DEFAULT_URL.to_string()),
            settings: config.rabbitmq.clone(),
            connect_timeout: config.connect_timeout,
            link: tokio::sync::Mutex::new(None),
            current: std::sync::Mutex::new(None),
            settlers: std::sync::Mutex::new(Vec::new()),
        });
        inner.link().await?;
        Ok(RabbitMqBackend { inner })
    }
}

impl Inner {
    /// The live link, connecting again if the last one died.
    async fn link(&self) -> Result<Link, BackendError> {
        let mut link = self.link.lock().await;
        if let Some(live) = link.as_ref().filter(|l| l.alive()) {
            return Ok(live.clone());
        }
        *link = None;
        let connected = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Connect {
                    backend: KIND,
                    url: crate::redact::redact_url(&self.url),
                    reason: format!("no connection within {:?}", self.connect_timeout),
                })
            })?;
        *link = Some(connected.clone());
        // a reconnection when the connection before this one was lost (not when only the
        // publishing channel was)
        let lost = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(Arc::clone(&connected.connection))
            .is_some_and(|previous| !previous.status().connected());
        if lost {
            tracing::info!(backend = KIND, "connected again");
            crate::metrics::reconnected(KIND);
        }
        Ok(connected)
    }

    async fn open(&self) -> Result<Link, BackendError> {
        let connect_error = |error: lapin::Error| BackendError::Connect {
            backend: KIND,
            url: crate::redact::redact_url(&self.url),
            reason: error
                .to_string()
                .replace(&self.url, &crate::redact::redact_url(&self.url)),
        };
        let properties = ConnectionProperties::default().with_connection_name(LongString::from(
            format!("transport/{}", std::process::id()),
        ));
        let connection = Connection::connect(&self.url, properties)
            .await
            .map_err(connect_error)?;
        let publish = connection.create_channel().await.map_err(connect_error)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(connect_error)?;
        publish
            .exchange_declare(
                ShortString::from(self.settings.exchange.as_str()),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(connect_error)?;
        Ok(Link {
            connection: Arc::new(connection),
            publish,
        })
    }

    /// Publishes and waits for the broker's confirm. (A link whose connection or channel
    /// died is replaced by the next `link()`.)
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BackendError> {
        let link = self.link().await?;
        let confirm = link
            .publish
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await
            .map_err(|e| operation_error(KIND, "publish", e))?;
        match confirm
            .await
            .map_err(|e| operation_error(KIND, "publish", e))?
        {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(BackendError::Operation {
                backend: KIND,
                operation: "publish",
                reason: format!(
                    "unroutable: no queue is bound to `{routing_key}` on exchange `{exchange}` (mandatory publish)"
                ),
            }),
            Confirmation::Nack(_) => Err(BackendError::Operation {
                backend: KIND,
                operation: "publish",
                reason: "the broker refused the message (negative confirm)".into(),
            }),
        }
    }

    /// Declares the delay queue for `delay` in front of `queue` (idempotent).
    async fn delay_queue(
        &self,
        queue: &str,
        durable: bool,
        delay: Duration,
    ) -> Result<String, BackendError> {
        let ms = delay.as_millis().max(1);
        // (server-named queues begin with the reserved `amq.`: the delay queue's name
        // must not)
        let name = format!("transport.retry.{ms}.{queue}");
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        let idle = ms.saturating_add(DELAY_QUEUE_IDLE.as_millis());
        arguments.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(i64::try_from(idle).unwrap_or(i64::MAX)),
        );
        // on a channel of its own: a refused declaration closes its channel, which must
        // not be the one publishes share
        let link = self.link().await?;
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(|e| operation_error(KIND, "declare delay queue", e))?;
        let declared = channel
            .queue_declare(
                ShortString::from(name.as_str()),
                QueueDeclareOptions {
                    durable,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(|e| operation_error(KIND, "declare delay queue", e));
        if channel.status().connected() {
            let _ = channel.close(200, ShortString::from("declared")).await;
        }
        declared.map(|_| name)
    }
}

/// Our headers, key, id and correlation id as AMQP properties.
fn to_properties(message: &Message, attempt: Option<u32>) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    for (name, value) in message.headers.iter() {
        match name {
            CONTENT_TYPE => properties = properties.with_content_type(value.into()),
            CORRELATION_ID => properties = properties.with_correlation_id(value.into()),
            _ => {
                headers.insert(name.into(), AMQPValue::LongString(value.into()));
            }
        }
    }
    if let Some(key) = &message.key {
        headers.insert(
            KEY_HEADER.into(),
            AMQPValue::LongString(key.as_str().into()),
        );
    }
    if let Some(attempt) = attempt {
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(attempt)),
        );
    }
    if let Some(id) = &message.id {
        properties = properties.with_message_id(id.as_str().into());
    }
    if let Some(reply_to) = &message.reply_to {
        properties = properties.with_reply_to(reply_to.as_str().into());
    }
    properties.with_headers(headers)
}

/// A header value as text, where it is one (foreign producers send numbers and flags).
fn header_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(text) => super::text(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.as_str().to_string(),
        AMQPValue::Boolean(flag) => flag.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        _ => return None,
    })
}

fn header_number(value: &AMQPValue) -> Option<u64> {
    header_text(value)?.parse().ok()
}

/// A consumed AMQP message as ours, and its attempt number.
fn from_delivery(delivery: lapin::message::Delivery) -> (Message, u32) {
    let properties = &delivery.properties;
    let mut message = Message::new(Bytes::from(delivery.data));
    let mut headers = Headers::new();
    let mut attempt = None;
    let mut delivery_count = None;
    if let Some(content_type) = properties.content_type() {
        headers.insert_received(CONTENT_TYPE, content_type.as_str());
    }
    if let Some(correlation) = properties.correlation_id() {
        headers.insert(CORRELATION_ID, correlation.as_str());
    }
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            match name.as_str() {
                ATTEMPT_HEADER => attempt = header_number(value),
                // quorum queues count deliveries (the first is 0 or absent)
                "x-delivery-count" => delivery_count = header_number(value),
                KEY_HEADER => message.key = header_text(value),
                other => {
                    if let Some(text) = header_text(value) {
                        headers.insert(other, text);
                    }
                }
            }
        }
    }
    message.headers = headers;
    message.id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().into());
    message.reply_to = properties
        .reply_to()
        .as_ref()
        .map(|r| r.as_str().to_string());
    let attempt = attempt.unwrap_or(1) + delivery_count.unwrap_or(0);
    let attempt = if attempt == 1 && delivery.redelivered {
        2
    } else {
        attempt
    };
    (message, u32::try_from(attempt).unwrap_or(u32::MAX))
}

/// What a subscription's settle task is asked to do.
enum Settlement {
    Ack(u64),
    Retry {
        tag: u64,
        delay: Duration,
        message: Arc<Message>,
        attempt: u32,
    },
    Dropped(u64),
}

/// The shared settle handle of one subscription: tokens are delivery tags.
struct Settler {
    queue: mpsc::UnboundedSender<Settlement>,
}

impl Settle for Settler {
    fn ack(&self, token: u64) {
        let _ = self.queue.send(Settlement::Ack(token));
    }

    fn nack(&self, token: u64, delay: Duration, message: &Arc<Message>, attempt: u32) {
        let _ = self.queue.send(Settlement::Retry {
            tag: token,
            delay,
            message: Arc::clone(message),
            attempt,
        });
    }

    fn dropped(&self, token: u64, _message: &Arc<Message>, _attempt: u32) {
        let _ = self.queue.send(Settlement::Dropped(token));
    }
}

/// Settles one channel's deliveries, in the order asked; acks a run of consecutive tags
/// from the lowest unsettled one with a single `multiple` ack. Ends with the channel.
async fn settle_task(
    inner: Arc<Inner>,
    channel: Channel,
    queue: String,
    durable: bool,
    mut requests: mpsc::UnboundedReceiver<Settlement>,
) {
    // Tags are given out from 1, in order. Every tag below `floor` is settled;
    // `settled` holds those above it that are (acked singly, or handed back).
    let mut floor = 1u64;
    let mut settled = BTreeSet::new();
    let mut batch = Vec::new();
    while requests.recv_many(&mut batch, 1024).await > 0 {
        // let a few more settle before acking: one `multiple` ack for many deliveries
        // instead of a frame each (a millisecond of prefetch credit is nothing)
        if batch.len() < 256 {
            tokio::time::sleep(ACK_COALESCE).await;
            while batch.len() < 1024 {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
        }
        let mut ready = Vec::new();
        for request in batch.drain(..) {
            match request {
                Settlement::Ack(tag) => ready.push(tag),
                Settlement::Retry {
                    tag,
                    delay,
                    message,
                    attempt,
                } => {
                    if queue_retry(&inner, &channel, &queue, durable, delay, &message, attempt)
                        .await
                    {
                        ready.push(tag);
                    }
                    // else the channel is gone: the message comes back with it
                }
                Settlement::Dropped(tag) => {
                    nack(&channel, tag).await;
                    settled.insert(tag);
                }
            }
        }
        ready.sort_unstable();
        // a run from `floor` goes in one `multiple` ack (it covers only outstanding
        // tags: those below are settled); the rest singly, at once, so that they do not
        // hold prefetch credit while a slow handler keeps `floor` where it is
        let mut run_end = None;
        let mut singles = Vec::new();
        for tag in ready {
            while settled.remove(&floor) {
                floor += 1;
            }
            if tag == floor {
                run_end = Some(tag);
                floor += 1;
            } else {
                singles.push(tag);
                settled.insert(tag);
            }
        }
        while settled.remove(&floor) {
            floor += 1;
        }
        if let Some(end) = run_end {
            ack(&channel, end, true).await;
        }
        for tag in singles {
            ack(&channel, tag, false).await;
        }
        if !channel.status().connected() {
            break;
        }
    }
}

async fn ack(channel: &Channel, tag: u64, multiple: bool) {
    if let Err(error) = channel.basic_ack(tag, BasicAckOptions { multiple }).await {
        tracing::warn!(%error, tag, "ack not sent (the channel is gone: the message comes back)");
    }
}

async fn nack(channel: &Channel, tag: u64) {
    if let Err(error) = channel
        .basic_nack(
            tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
        .await
    {
        tracing::warn!(%error, tag, "nack not sent (the channel is gone: the message comes back)");
    }
}

/// Publishes a retry's copy, trying again with backoff while it fails (never handing
/// the original back with `requeue`: it would come back without its attempt number and
/// could run its handler without end). `false` once the channel is gone, whose unacked
/// message the broker gives out again by itself.
async fn queue_retry(
    inner: &Inner,
    channel: &Channel,
    queue: &str,
    durable: bool,
    delay: Duration,
    message: &Message,
    attempt: u32,
) -> bool {
    let mut wait = Duration::from_millis(100);
    loop {
        match republish(inner, queue, durable, delay, message, attempt).await {
            Ok(()) => return true,
            Err(error) => {
                if !channel.status().connected() {
                    return false;
                }
                tracing::error!(%queue, %error, retry_in = ?wait, "a retry could not be queued; trying again (the message stays unacknowledged)");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Queues a retry: a copy carrying its next attempt number, through the delay queue (or
/// straight back to its queue without a delay).
async fn republish(
    inner: &Inner,
    queue: &str,
    durable: bool,
    delay: Duration,
    message: &Message,
    attempt: u32,
) -> Result<(), BackendError> {
    let target = if delay.is_zero() {
        queue.to_string()
    } else {
        inner.delay_queue(queue, durable, delay).await?
    };
    let properties = to_properties(message, Some(attempt.saturating_add(1)));
    inner
        .publish("", &target, true, &message.payload, properties)
        .await
}

impl RabbitMqBackend {
    async fn start(&self, spec: &SubscriptionSpec) -> Result<Subscription, BackendError> {
        let link = self.inner.link().await?;
        let failed =
            |operation: &'static str| move |e: lapin::Error| operation_error(KIND, operation, e);
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(failed("open channel"))?;
        let prefetch = u16::try_from(spec.prefetch.max(1)).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(failed("qos"))?;
        let durable = spec.group.is_some();
        let (name, options, mut arguments) = match &spec.group {
            Some(group) => (
                format!("{}#{group}", spec.topic),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
            None => (
                String::new(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        };
        if name.len() > MAX_NAME_BYTES {
            return Err(BackendError::InvalidTopic {
                backend: KIND,
                topic: spec.topic.clone(),
                reason: format!(
                    "its queue name `{name}` is longer than {MAX_NAME_BYTES} bytes (AMQP's 255, less room for its delay queues)"
                ),
            });
        }
        if durable && self.inner.settings.quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        let queue = channel
            .queue_declare(ShortString::from(name.as_str()), options, arguments)
            .await
            .map_err(failed("declare queue"))?;
        let queue = queue.name().as_str().to_string();
        channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(self.inner.settings.exchange.as_str()),
                ShortString::from(spec.topic.as_str()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(failed("bind queue"))?;
        let consumer = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(CONSUMER_TAG),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(failed("consume"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let settling = tokio::spawn(settle_task(
            Arc::clone(&self.inner),
            channel,
            queue.clone(),
            durable,
            rx,
        ));
        {
            let mut settlers = self
                .inner
                .settlers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            settlers.retain(|task| !task.is_finished());
            settlers.push(settling);
        }
        let settle: Arc<dyn Settle> = Arc::new(Settler { queue: tx });
        let subscriber = spec.subscriber.clone();
        // one closure polled for each delivery (no chain of combinators moving the
        // delivery from one to the next); the stream ends with the consumer or its first
        // error
        let mut consumer = Some(consumer);
        let stream = futures_util::stream::poll_fn(move |cx| {
            let Some(live) = consumer.as_mut() else {
                return Poll::Ready(None);
            };
            match std::task::ready!(live.poll_next_unpin(cx)) {
                Some(Ok(delivery)) => {
                    let tag = delivery.delivery_tag;
                    let (message, attempt) = from_delivery(delivery);
                    Poll::Ready(Some(Delivery::settled_by(
                        message,
                        attempt,
                        Arc::clone(&settle),
                        tag,
                    )))
                }
                Some(Err(error)) => {
                    tracing::warn!(%subscriber, %error, "rabbitmq consumer ended");
                    consumer = None;
                    Poll::Ready(None)
                }
                None => {
                    consumer = None;
                    Poll::Ready(None)
                }
            }
        });
        Ok(stream.boxed())
    }
}

impl Backend for RabbitMqBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn connected(&self) -> bool {
        self.inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|connection| connection.status().connected())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            persistence: true,
            ordering: true,
            at_least_once: true,
            native_redelivery: true,
            headers: true,
            keys: true,
        }
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        Publish::boxed(async move {
            let properties = to_properties(&message, None);
            self.inner
                .publish(
                    &self.inner.settings.exchange,
                    topic,
                    self.inner.settings.mandatory,
                    &message.payload,
                    properties,
                )
                .await
        })
    }

    fn reply<'a>(&'a self, address: &'a str, message: Message) -> Publish<'a> {
        // an AMQP reply-to names a queue: the default exchange routes to it directly
        Publish::boxed(async move {
            let properties = to_properties(&message, None);
            self.inner
                .publish("", address, true, &message.payload, properties)
                .await
        })
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        self.start(spec).boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async move {
            // the settle tasks end once their subscriptions and deliveries are gone
            // (the dispatchers have drained): let them send their last acks
            let settlers = std::mem::take(
                &mut *self
                    .inner
                    .settlers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if tokio::time::timeout(SETTLE_FLUSH, futures_util::future::join_all(settlers))
                .await
                .is_err()
            {
                tracing::warn!(
                    "rabbitmq: acks still unsent at close; their messages will be delivered again"
                );
            }
            let link = self.inner.link.lock().await.take();
            if let Some(link) = link
                && link.connection.status().connected()
            {
                link.connection
                    .close(200, ShortString::from("bye"))
                    .await
                    .map_err(|e| operation_error(KIND, "close", e))?;
            }
            Ok(())
        }
        .boxed()
    }

    fn owns_header(&self, name: &str) -> bool {
        name == ATTEMPT_HEADER
            || name == "x-delivery-count"
            || name == "x-death"
            || name.starts_with("x-first-death-")
            || name.starts_with("x-last-death-")
    }

    fn max_message_size(&self) -> Option<usize> {
        // RabbitMQ 4's default `max_message_size`
        Some(16 << 20)
    }
}
