//! The contract between the runtime and a broker.
//!
//! A backend only speaks its broker's protocol: publish a message and return once the
//! broker has it, turn a subscription into a stream of [`Delivery`], and settle each
//! delivery through its [`Acknowledge`] handle. Retry, dead-letter, decoding,
//! concurrency and drain are the dispatcher's (`dispatch.rs`), the same for every broker.

#[cfg(any(feature = "nats", feature = "kafka"))]
mod ascending;
#[cfg(any(feature = "nats", feature = "redis"))]
pub(crate) mod dropped;
#[cfg(feature = "nats")]
pub mod jetstream;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod mqtt_filter;
mod name_hash;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "nsq")]
pub mod nsq;
mod prefixed;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod redis_streams;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::error::BackendError;
use crate::message::Message;

/// What a backend promises; the dispatcher and the conformance suite read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Competing consumers: a group's members share the messages.
    pub groups: bool,
    /// Messages published before a subscriber exists are kept for it.
    pub persistence: bool,
    /// One subscriber with concurrency 1 sees messages in publish order.
    pub ordering: bool,
    /// Unacknowledged messages come back (at-least-once).
    pub at_least_once: bool,
    /// The broker redelivers on `nack` by itself (with a delay); otherwise the runtime
    /// retries in place.
    pub native_redelivery: bool,
    /// Headers travel with the message.
    pub headers: bool,
    /// Keys travel with the message.
    pub keys: bool,
}

/// What to subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Topic name, as the application writes it (`sensor.readings`).
    pub topic: String,
    /// Group name: `None` means fan-out (every subscriber gets every message).
    pub group: Option<String>,
    /// The subscriber's display name (`Service::method`), for durable names and logs.
    pub subscriber: String,
    /// How many deliveries may be fetched ahead of the handlers.
    pub prefetch: usize,
    /// The retry policy's attempt limit (some brokers enforce it themselves).
    pub max_attempts: u32,
    /// A broker-side consumer name to use instead of the backend's default (JetStream
    /// durable name), from `[subscribers."Name"] consumer`.
    pub consumer: Option<String>,
    /// `topic` is an MQTT topic filter (`#[subscriber(mqtt_filter = ...)]`), taken as it
    /// is; each delivery names its concrete topic ([`Delivery::with_topic`]). Only
    /// backends whose [`Backend::validate_filter`] accepts filters get such a spec.
    pub filter: bool,
}

/// A stream of deliveries for one subscription. Ends when the backend closes.
pub type Subscription = BoxStream<'static, Delivery>;

/// Settles one delivery with the broker. Implementations do not wait for the broker:
/// acks are batched or pipelined behind this call. For a backend whose deliveries are
/// told apart by a number (a delivery tag, an offset), [`Settle`] avoids the box.
pub trait Acknowledge: Send + 'static {
    /// The message was handled (or dead-lettered); the broker may forget it.
    fn ack(self: Box<Self>);
    /// The message was not handled; deliver it again after `delay`.
    fn nack(self: Box<Self>, delay: Duration);
}

/// Settles the deliveries of one subscription, each named by a `token` the backend
/// chose (a delivery tag, an offset...): one shared handle, so a delivery carries no
/// allocation of its own. The delivery's message and attempt number are passed back for
/// a backend that requeues by itself.
pub trait Settle: Send + Sync + 'static {
    /// The message was handled (or dead-lettered); the broker may forget it.
    fn ack(&self, token: u64);
    /// The message was not handled; deliver it again after `delay`.
    fn nack(&self, token: u64, delay: Duration, message: &Arc<Message>, attempt: u32);
    /// The delivery was dropped unsettled (its handler was cancelled). The default does
    /// nothing: the broker hands it out again by itself (an ack deadline, a dead
    /// connection).
    fn dropped(&self, token: u64, message: &Arc<Message>, attempt: u32) {
        let _ = (token, message, attempt);
    }
}

/// How a delivery is settled.
enum Acker {
    /// At-most-once: nothing to settle.
    None,
    Boxed(Box<dyn Acknowledge>),
    Shared(Arc<dyn Settle>, u64),
}

/// One message handed to the runtime by a backend.
pub struct Delivery {
    /// The message (shared, so handing it to a handler and keeping it for a retry or the
    /// dead-letter topic copies nothing).
    pub message: Arc<Message>,
    /// 1 for a first delivery; the broker's delivery count where it keeps one.
    pub attempt: u32,
    acker: Acker,
    defect: Option<Box<str>>,
    topic: Option<Arc<str>>,
    lane: Option<u64>,
}

impl Delivery {
    /// A delivery that must be settled through `acker` (at-least-once backends).
    pub fn new(
        message: impl Into<Arc<Message>>,
        attempt: u32,
        acker: Box<dyn Acknowledge>,
    ) -> Self {
        Delivery {
            message: message.into(),
            attempt: attempt.max(1),
            acker: Acker::Boxed(acker),
            defect: None,
            topic: None,
            lane: None,
        }
    }

    /// A delivery settled through the subscription's shared `settle` handle, as `token`.
    pub fn settled_by(
        message: impl Into<Arc<Message>>,
        attempt: u32,
        settle: Arc<dyn Settle>,
        token: u64,
    ) -> Self {
        Delivery {
            message: message.into(),
            attempt: attempt.max(1),
            acker: Acker::Shared(settle, token),
            defect: None,
            topic: None,
            lane: None,
        }
    }

    /// Marks an entry the backend could not turn into a proper message (a field name
    /// that is not UTF-8, no payload field...): `message` carries what could be kept of
    /// it, and the dispatcher dead-letters it with `reason` without running the handler.
    pub fn with_defect(mut self, reason: impl Into<String>) -> Self {
        self.defect = Some(reason.into().into_boxed_str());
        self
    }

    /// Why the backend could not turn this entry into a proper message, if it could not.
    pub fn defect(&self) -> Option<&str> {
        self.defect.as_deref()
    }

    /// Names the concrete topic the message came on, for a subscription to a filter
    /// (`SubscriptionSpec::filter`); the handler's `Context::topic` gives it.
    pub fn with_topic(mut self, topic: impl Into<Arc<str>>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The concrete topic the message came on, where it is not the subscribed one.
    pub fn topic(&self) -> Option<&Arc<str>> {
        self.topic.as_ref()
    }

    /// Puts the delivery in an ordering lane (a Kafka partition): with `concurrency > 1`
    /// the dispatcher runs the deliveries of one lane one after the other, in the order
    /// given, while different lanes run at once.
    pub fn in_lane(mut self, lane: u64) -> Self {
        self.lane = Some(lane);
        self
    }

    /// The delivery's ordering lane, if the backend gave it one.
    pub fn lane(&self) -> Option<u64> {
        self.lane
    }

    /// A delivery that needs no settling (at-most-once backends).
    pub fn unacknowledged(message: impl Into<Arc<Message>>) -> Self {
        Delivery {
            message: message.into(),
            attempt: 1,
            acker: Acker::None,
            defect: None,
            topic: None,
            lane: None,
        }
    }

    /// Acknowledges the delivery.
    pub fn ack(mut self) {
        match std::mem::replace(&mut self.acker, Acker::None) {
            Acker::None => {}
            Acker::Boxed(acker) => acker.ack(),
            Acker::Shared(settle, token) => settle.ack(token),
        }
    }

    /// Whether the broker settles this delivery (it can come back); `false` for
    /// at-most-once deliveries, which the runtime must retry in place.
    pub fn is_settled_by_broker(&self) -> bool {
        !matches!(self.acker, Acker::None)
    }

    /// Asks for redelivery after `delay`.
    pub fn nack(mut self, delay: Duration) {
        match std::mem::replace(&mut self.acker, Acker::None) {
            Acker::None => {}
            Acker::Boxed(acker) => acker.nack(delay),
            Acker::Shared(settle, token) => settle.nack(token, delay, &self.message, self.attempt),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // a boxed acker's own `Drop` speaks for it
        if let Acker::Shared(settle, token) = std::mem::replace(&mut self.acker, Acker::None) {
            settle.dropped(token, &self.message, self.attempt);
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .field("acknowledged", &self.is_settled_by_broker())
            .finish()
    }
}

/// What [`Backend::publish`] returns: the outcome itself from a backend that publishes
/// without waiting (the in-process broker: nothing allocated), else a boxed future.
#[must_use = "a publish does nothing unless awaited"]
pub struct Publish<'a>(PublishState<'a>);

enum PublishState<'a> {
    Ready(Option<Result<(), BackendError>>),
    Boxed(BoxFuture<'a, Result<(), BackendError>>),
}

impl<'a> Publish<'a> {
    /// A publish that has already happened (or failed).
    pub fn ready(outcome: Result<(), BackendError>) -> Self {
        Publish(PublishState::Ready(Some(outcome)))
    }

    /// The outcome of a publish that has already happened (the in-process broker's),
    /// taken without polling; `None` for one that waits on the broker.
    pub(crate) fn take_ready(&mut self) -> Option<Result<(), BackendError>> {
        match &mut self.0 {
            PublishState::Ready(outcome) => outcome.take(),
            PublishState::Boxed(_) => None,
        }
    }

    /// A publish that completes when `future` does.
    pub fn boxed(future: impl Future<Output = Result<(), BackendError>> + Send + 'a) -> Self {
        Publish(PublishState::Boxed(Box::pin(future)))
    }
}

impl Future for Publish<'_> {
    type Output = Result<(), BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            PublishState::Ready(outcome) => match outcome.take() {
                Some(outcome) => Poll::Ready(outcome),
                None => Poll::Pending, // polled after completion
            },
            PublishState::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

/// A broker connection. See the module docs for who does what.
pub trait Backend: Send + Sync + 'static {
    /// The backend's kind, as written in config (`memory`, `nats`, ...).
    fn kind(&self) -> &'static str;

    /// What this backend promises.
    fn capabilities(&self) -> Capabilities;

    /// Publishes `message` to `topic`; resolves once the broker has accepted it.
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a>;

    /// Publishes `message` to `topic` for delivery after `delay` (NSQ's `DPUB`; the
    /// in-process broker holds it back itself). The default refuses: a broker without
    /// deferred delivery says so rather than delivering early.
    fn publish_deferred<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
        delay: Duration,
    ) -> Publish<'a> {
        let _ = (topic, message, delay);
        Publish::ready(Err(BackendError::Unsupported {
            backend: self.kind(),
            what: "defer a message's delivery",
        }))
    }

    /// Publishes several messages to `topic` (NSQ's `MPUB`: one round trip); resolves
    /// once the broker has them all. The default publishes them one after the other,
    /// stopping at the first failure.
    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> Publish<'a> {
        Publish::boxed(async move {
            for message in messages {
                self.publish(topic, message).await?;
            }
            Ok(())
        })
    }

    /// Publishes a reply to a broker-native reply address taken from a consumed
    /// message (`Message::reply_to`: a NATS reply subject...). The address is used as it
    /// is: no topic prefix, no topic rule. The default publishes to it as a topic.
    fn reply<'a>(&'a self, address: &'a str, message: Message) -> Publish<'a> {
        self.publish(address, message)
    }

    /// Starts a subscription.
    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>>;

    /// Flushes pending acknowledgements and disconnects. Subscriptions end.
    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Checks `topic` for this broker (called at startup for every subscribed,
    /// dead-letter and reply topic, and on every publish). The default is
    /// [`check_topic`], the portable rule; a backend may tighten it, never loosen it.
    fn validate_topic(&self, topic: &str) -> Result<(), BackendError> {
        check_topic(self.kind(), topic)
    }

    /// Checks an MQTT topic filter (`#[subscriber(mqtt_filter = ...)]`) at startup. The
    /// default refuses it: only backends that can subscribe to a filter (mqtt, and the
    /// in-process broker, which matches filters itself) accept one.
    fn validate_filter(&self, filter: &str) -> Result<(), BackendError> {
        Err(filters_unsupported(self.kind(), filter))
    }

    /// Whether `name` is a header the broker itself acts on (a deduplication id, an
    /// expected stream or sequence...). Such headers are never copied from a consumed
    /// message into its dead letter, which is a new message.
    fn owns_header(&self, _name: &str) -> bool {
        false
    }

    /// The largest message (payload plus headers, in bytes) the broker accepts, where it
    /// has a limit the backend knows. Dead letters are fitted under it.
    fn max_message_size(&self) -> Option<usize> {
        None
    }

    /// Whether the client is connected to the broker now, where it can tell (readiness,
    /// [`Health`](crate::Health)); `true` where it cannot, a lost connection then showing
    /// as subscriptions the backend ended.
    fn connected(&self) -> bool {
        true
    }
}

/// `bytes` as text: borrowed when it is UTF-8 (checked a word at a time: the usual
/// case, on every delivery of some brokers), with replacement characters otherwise.
#[cfg_attr(
    not(any(
        feature = "redis",
        feature = "kafka",
        feature = "rabbitmq",
        feature = "mqtt"
    )),
    allow(dead_code)
)]
pub(crate) fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// `backend`'s `operation` failed, as the broker or its client said (`error`).
#[cfg_attr(
    not(any(
        feature = "nats",
        feature = "redis",
        feature = "rabbitmq",
        feature = "mqtt",
        feature = "kafka",
        feature = "nsq"
    )),
    allow(dead_code)
)]
pub(crate) fn operation_error(
    backend: &'static str,
    operation: &'static str,
    error: impl fmt::Display,
) -> BackendError {
    BackendError::Operation {
        backend,
        operation,
        reason: error.to_string(),
    }
}

/// The error of a backend that cannot subscribe to an MQTT topic filter.
pub(crate) fn filters_unsupported(backend: &'static str, filter: &str) -> BackendError {
    BackendError::InvalidTopic {
        backend,
        topic: filter.to_string(),
        reason: format!(
            "is an MQTT topic filter (`mqtt_filter`): the {backend} backend cannot subscribe to one (mqtt and memory can)"
        ),
    }
}

/// Characters that are wildcards or separators on some broker (`*`, `>` on NATS, `#`,
/// `+` on MQTT, `*`, `#` on AMQP): a topic holding one would mean different things on
/// different brokers, so no topic may hold them.
pub const RESERVED_TOPIC_CHARS: &[char] = &['*', '>', '#', '+'];

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_BYTES: usize = 249;

/// The portable topic rule every backend applies: non-empty, at most
/// [`MAX_TOPIC_BYTES`], no whitespace or control characters, none of
/// [`RESERVED_TOPIC_CHARS`] (wildcard subscriptions are not a feature of this
/// framework), and no empty `.`-separated segment (`a..b`, `.a`, `a.`).
///
/// ```
/// use transport::backend::check_topic;
/// assert!(check_topic("memory", "sensor.readings").is_ok());
/// assert!(check_topic("memory", "orders.*").is_err());
/// assert!(check_topic("memory", "orders..x").is_err());
/// ```
pub fn check_topic(backend: &'static str, topic: &str) -> Result<(), BackendError> {
    // This runs on every publish: eight bytes at a time, no branch per byte; the slow
    // path, for names with non-ASCII characters or a problem, says what is wrong.
    if plain_topic(topic.as_bytes()) {
        return Ok(());
    }
    match topic_problem(topic) {
        Some(reason) => Err(BackendError::InvalidTopic {
            backend,
            topic: topic.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Whether `bytes` is a name [`topic_problem`] finds nothing wrong with, and is all
/// printable ASCII (`false` sends the caller to the slow path, which decides).
fn plain_topic(bytes: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if bytes.len() > MAX_TOPIC_BYTES || first == b'.' || last == b'.' {
        return false;
    }
    let mut bad = 0;
    // the last byte of the previous word was a dot (bit 63 of its dot mask)
    let mut carried_dot = 0;
    let mut chunks = bytes.chunks_exact(8);
    let mut word = |word: u64| {
        let dots = TopicWord(word).dots();
        bad |= TopicWord(word).not_plain() | (dots & (dots << 8)) | (dots & (carried_dot >> 56));
        carried_dot = dots;
    };
    for chunk in &mut chunks {
        let mut eight = [0; 8];
        eight.copy_from_slice(chunk);
        word(u64::from_le_bytes(eight));
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        // padded with a plain letter
        let mut eight = [b'a'; 8];
        eight[..tail.len()].copy_from_slice(tail);
        word(u64::from_le_bytes(eight));
    }
    bad == 0
}

/// Eight bytes of a topic name, tested together (SWAR: every test below is exact about
/// whether some byte matches, which is all [`plain_topic`] asks).
#[derive(Clone, Copy)]
struct TopicWord(u64);

impl TopicWord {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

    /// The high bit of each byte equal to `byte`, and of no other.
    fn equal(self, byte: u8) -> u64 {
        let v = self.0 ^ (Self::ONES * u64::from(byte));
        !(((v & Self::LOW7).wrapping_add(Self::LOW7)) | v | Self::LOW7)
    }

    /// The dots, as high bits.
    fn dots(self) -> u64 {
        self.equal(b'.')
    }

    /// Non-zero when some byte is not printable ASCII (below `!`, above `~`) or is one of
    /// [`RESERVED_TOPIC_CHARS`].
    fn not_plain(self) -> u64 {
        let w = self.0;
        let below = w.wrapping_sub(Self::ONES * 0x21) & !w & Self::HIGH;
        let above = (w.wrapping_add(Self::ONES) | w) & Self::HIGH;
        below | above | self.equal(b'*') | self.equal(b'>') | self.equal(b'#') | self.equal(b'+')
    }
}

/// What is wrong with `topic`, if anything (the rule of [`check_topic`], spelled out).
fn topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() {
        Some("is empty".to_string())
    } else if topic.len() > MAX_TOPIC_BYTES {
        Some(format!(
            "is {} bytes long (at most {MAX_TOPIC_BYTES})",
            topic.len()
        ))
    } else if let Some(c) = topic.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(format!(
            "contains whitespace or a control character ({c:?})"
        ))
    } else if let Some(c) = topic.chars().find(|c| RESERVED_TOPIC_CHARS.contains(c)) {
        Some(format!(
            "contains `{c}`, a wildcard on some brokers (wildcard subscriptions are not supported)"
        ))
    } else if topic.split('.').any(str::is_empty) {
        Some("has an empty `.`-separated segment".to_string())
    } else {
        None
    }
}

/// Every broker kind: its name in config, the cargo feature of `transport` that enables
/// it, and whether this build has that feature.
pub const KINDS: [(&str, &str, bool); 9] = [
    ("memory", "", true),
    ("nats", "nats", cfg!(feature = "nats")),
    ("jetstream", "nats", cfg!(feature = "nats")),
    ("redis", "redis", cfg!(feature = "redis")),
    ("redis-streams", "redis", cfg!(feature = "redis")),
    ("rabbitmq", "rabbitmq", cfg!(feature = "rabbitmq")),
    ("mqtt", "mqtt", cfg!(feature = "mqtt")),
    ("kafka", "kafka", cfg!(feature = "kafka")),
    ("nsq", "nsq", cfg!(feature = "nsq")),
];

/// Whether `kind` names a backend compiled into this build: an unknown name, or one whose
/// cargo feature is off, is a configuration error that says which.
pub fn check_kind(kind: &str) -> Result<(), crate::error::ConfigError> {
    use crate::error::ConfigError;
    match KINDS.iter().find(|(name, _, _)| *name == kind) {
        Some((_, _, true)) => Ok(()),
        Some((_, feature, false)) => Err(ConfigError::BackendNotEnabled {
            kind: kind.to_string(),
            feature,
        }),
        None => Err(ConfigError::UnknownBackend {
            kind: kind.to_string(),
            known: KINDS.map(|(name, _, _)| name).join(", "),
        }),
    }
}

/// Connects the backend that `config` names (wrapped to apply `topic_prefix`).
pub async fn connect(
    config: &crate::config::BrokerConfig,
) -> Result<Arc<dyn Backend>, crate::error::Error> {
    check_kind(&config.kind)?;
    let backend: Arc<dyn Backend> = match config.kind.as_str() {
        "memory" => Arc::new(memory::MemoryBroker::named(
            &config.name,
            memory::MemoryOptions {
                queue_capacity: config.queue_capacity,
            },
        )),
        #[cfg(feature = "nats")]
        "nats" => Arc::new(nats::NatsBackend::connect(config).await?),
        #[cfg(feature = "nats")]
        "jetstream" => Arc::new(jetstream::JetStreamBackend::connect(config).await?),
        #[cfg(feature = "redis")]
        "redis" => Arc::new(redis::RedisBackend::connect(config).await?),
        #[cfg(feature = "redis")]
        "redis-streams" => Arc::new(redis_streams::RedisStreamsBackend::connect(config).await?),
        #[cfg(feature = "rabbitmq")]
        "rabbitmq" => Arc::new(rabbitmq::RabbitMqBackend::connect(config).await?),
        #[cfg(feature = "mqtt")]
        "mqtt" => Arc::new(mqtt::MqttBackend::connect(config).await?),
        #[cfg(feature = "kafka")]
        "kafka" => Arc::new(kafka::KafkaBackend::connect(config).await?),
        #[cfg(feature = "nsq")]
        "nsq" => Arc::new(nsq::NsqBackend::connect(config).await?),
        // check_kind admitted only kinds that have an arm above in this build.
        other => {
            return Err(crate::error::ConfigError::UnknownBackend {
                kind: other.to_string(),
                known: KINDS.map(|(name, _, _)| name).join(", "),
            }
            .into());
        }
    };
    Ok(prefixed::with_prefix(backend, &config.topic_prefix))
}

#[cfg(test)]
impl SubscriptionSpec {
    /// A test's subscription of its own (no group) to `topic`.
    pub(crate) fn fan_out(topic: &str) -> Self {
        SubscriptionSpec {
            topic: topic.into(),
            group: None,
            subscriber: "test".into(),
            prefetch: 8,
            max_attempts: 3,
            consumer: None,
            filter: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_borrowed_when_it_is_utf8_and_mended_when_not() {
        assert!(matches!(text(b"k-1"), std::borrow::Cow::Borrowed("k-1")));
        assert_eq!(text(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn the_fast_path_agrees_with_the_rule() {
        let long = "a".repeat(MAX_TOPIC_BYTES + 1);
        for (topic, ok) in [
            ("sensor.readings", true),
            ("a", true),
            ("a-b_c/d:e", true),
            ("ünïcode.topic", true),
            ("", false),
            (".a", false),
            ("a.", false),
            ("a..b", false),
            ("a b", false),
            ("a\tb", false),
            ("a\u{a0}b", false),
            ("orders.*", false),
            ("orders.>", false),
            ("a#", false),
            ("a+b", false),
            (long.as_str(), false),
        ] {
            assert_eq!(check_topic("test", topic).is_ok(), ok, "{topic:?}");
            assert_eq!(topic_problem(topic).is_none(), ok, "{topic:?}");
        }
    }

    #[test]
    fn the_word_at_a_time_test_agrees_with_the_rule_at_every_position() {
        fn agrees(name: &[u8]) {
            let topic = std::str::from_utf8(name).unwrap();
            assert_eq!(
                plain_topic(name),
                topic_problem(topic).is_none(),
                "{topic:?}"
            );
        }
        // every ASCII byte at every position of names crossing word boundaries, and with
        // a dot, a second dot at every other position
        for len in 1..=19 {
            for at in 0..len {
                for byte in 0..=0x7f {
                    let mut name = vec![b'x'; len];
                    name[at] = byte;
                    agrees(&name);
                    if byte == b'.' {
                        for other in 0..len {
                            let mut two = name.clone();
                            two[other] = b'.';
                            agrees(&two);
                        }
                    }
                }
                // a non-ASCII character anywhere takes the slow path, which decides
                let mut name = "x".repeat(len);
                name.replace_range(at..=at, "\u{e9}");
                assert!(!plain_topic(name.as_bytes()));
                assert!(check_topic("test", &name).is_ok(), "{name:?}");
            }
        }
    }
}
