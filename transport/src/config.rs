//! Configuration: a TOML file and `TRANSPORT_*` environment variables (env wins).
//!
//! ```toml
//! [broker]
//! kind = "memory"          # memory | nats | jetstream | redis | redis-streams | ...
//! # url = "nats://127.0.0.1:4222"
//!
//! [subscriber]             # defaults for every subscriber
//! concurrency = 1
//! max_attempts = 3
//! backoff = "100ms"
//! backoff_max = "10s"
//! dead_letter = "{topic}.dlq"
//!
//! [subscribers."SaverService::save"]   # per-subscriber overrides
//! concurrency = 8
//!
//! [publisher]
//! codec = "json"
//!
//! [shutdown]
//! drain_timeout = "30s"
//! ```
//!
//! Environment: `TRANSPORT_BROKER__KIND=nats`, `TRANSPORT_SUBSCRIBER__MAX_ATTEMPTS=5`, ...
//! (`__` separates levels). `TRANSPORT_CONFIG` names the file (default `transport.toml`
//! in the working directory, if present).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::codec::SerdeCodec;
use crate::error::ConfigError;
pub use crate::redact::redact_url;

/// Environment variable naming the config file.
pub const CONFIG_FILE_ENV: &str = "TRANSPORT_CONFIG";
/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "TRANSPORT_";
/// The file read when `TRANSPORT_CONFIG` is unset, if it exists.
pub const DEFAULT_FILE: &str = "transport.toml";

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Which broker, and how to reach it.
    pub broker: BrokerConfig,
    /// Defaults for every subscriber.
    pub subscriber: SubscriberConfig,
    /// Overrides per subscriber, keyed by its name (`Service::method` or function name).
    pub subscribers: BTreeMap<String, SubscriberOverride>,
    /// Publisher settings.
    pub publisher: PublisherConfig,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// `[metrics]`: where the Prometheus scrape endpoint listens (feature `prometheus`).
    pub metrics: MetricsConfig,
    /// The WebSocket server's settings (`[websocket]`: address, path, framing, limits),
    /// for the servers given to [`App::websocket`](crate::App::websocket).
    #[cfg(feature = "websocket")]
    pub websocket: crate::ws::WsConfig,
}

/// `[broker]`. Its `Debug` output hides the password in `url`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// The backend: `memory` (default), or a broker enabled by a cargo feature.
    pub kind: String,
    /// Where the broker listens (backend-specific URL).
    pub url: Option<String>,
    /// The in-process broker's name: Apps naming the same one share it.
    pub name: String,
    /// Messages an in-process queue holds; publishing to a full one is an error.
    pub queue_capacity: usize,
    /// Largest payload, in bytes, accepted on publish and handed to a handler when
    /// consumed (a larger consumed message is dead-lettered undecoded).
    pub max_message_bytes: usize,
    /// Prepended to every topic on the wire (`staging.` makes `orders` travel as
    /// `staging.orders`); handlers still see the topic they declared.
    pub topic_prefix: String,
    /// How long connecting may take at startup.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `[broker.jetstream]`: JetStream streams and consumers.
    pub jetstream: JetStreamConfig,
    /// `[broker.redis]`: Redis streams.
    pub redis: RedisConfig,
    /// `[broker.rabbitmq]`: RabbitMQ topology and publishing.
    pub rabbitmq: RabbitMqConfig,
    /// `[broker.mqtt]`: MQTT sessions.
    pub mqtt: MqttConfig,
    /// `[broker.kafka]`: Kafka topics, consumer groups and librdkafka properties.
    pub kafka: KafkaConfig,
    /// `[broker.nsq]`: nsqlookupd discovery.
    pub nsq: NsqConfig,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("kind", &self.kind)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("name", &self.name)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("topic_prefix", &self.topic_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("jetstream", &self.jetstream)
            .field("redis", &self.redis)
            .field("rabbitmq", &self.rabbitmq)
            .field("mqtt", &self.mqtt)
            .field("kafka", &self.kafka)
            .field("nsq", &self.nsq)
            .finish()
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: "memory".into(),
            url: None,
            name: "default".into(),
            queue_capacity: 65_536,
            max_message_bytes: 16 * 1024 * 1024,
            topic_prefix: String::new(),
            connect_timeout: Duration::from_secs(5),
            jetstream: JetStreamConfig::default(),
            redis: RedisConfig::default(),
            rabbitmq: RabbitMqConfig::default(),
            mqtt: MqttConfig::default(),
            kafka: KafkaConfig::default(),
            nsq: NsqConfig::default(),
        }
    }
}

/// `[broker.nsq]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NsqConfig {
    /// nsqlookupd HTTP addresses (`127.0.0.1:4161`): subscriptions read from every nsqd
    /// they name for the topic, instead of the nsqds in `broker.url` (which publishing
    /// uses).
    pub lookupd: Vec<String>,
    /// How often nsqlookupd is asked again.
    #[serde(with = "humantime_serde")]
    pub lookupd_poll_interval: Duration,
}

impl Default for NsqConfig {
    fn default() -> Self {
        NsqConfig {
            lookupd: Vec::new(),
            lookupd_poll_interval: Duration::from_secs(60),
        }
    }
}

/// `[broker.kafka]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Create a topic that does not exist (on the first publish to it or subscription
    /// to it) with `partitions` and `replication`.
    pub create_topics: bool,
    /// Partitions of a created topic.
    pub partitions: i32,
    /// Replication factor of a created topic.
    pub replication: i32,
    /// The consumer group session timeout: a member silent this long leaves its group
    /// and its partitions go to the others.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Longest a consumer may go without fetching before it is taken out of its group.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// How often stored offsets (those of handled messages) are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How long a subscription waits to join its group and get its partitions.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// How long a publish may wait for the broker's acknowledgement (librdkafka's
    /// `message.timeout.ms`) before it is an error.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Any librdkafka property, for both the producer and the consumers
    /// (`"security.protocol" = "ssl"`...); applied after the framework's own.
    pub properties: std::collections::BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    pub producer: std::collections::BTreeMap<String, String>,
    /// librdkafka properties for the consumers only.
    pub consumer: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // property values may be secrets (`sasl.password`): names only
        let names = |map: &std::collections::BTreeMap<String, String>| {
            map.keys().cloned().collect::<Vec<_>>()
        };
        f.debug_struct("KafkaConfig")
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("session_timeout", &self.session_timeout)
            .field("max_poll_interval", &self.max_poll_interval)
            .field("commit_interval", &self.commit_interval)
            .field("join_timeout", &self.join_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("properties", &names(&self.properties))
            .field("producer", &names(&self.producer))
            .field("consumer", &names(&self.consumer))
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            create_topics: true,
            partitions: 1,
            replication: 1,
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            commit_interval: Duration::from_secs(1),
            join_timeout: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(30),
            properties: Default::default(),
            producer: Default::default(),
            consumer: Default::default(),
        }
    }
}

impl KafkaConfig {
    /// Checks the `[broker.kafka]` values that parse but cannot work; the error names
    /// the key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.partitions < 1 {
            return Err(value_error("broker.kafka.partitions", "must be at least 1"));
        }
        if self.replication < 1 {
            return Err(value_error(
                "broker.kafka.replication",
                "must be at least 1",
            ));
        }
        for (key, value, least) in [
            (
                "session_timeout",
                self.session_timeout,
                Duration::from_secs(1),
            ),
            (
                "max_poll_interval",
                self.max_poll_interval,
                Duration::from_secs(1),
            ),
            (
                "commit_interval",
                self.commit_interval,
                Duration::from_millis(1),
            ),
            ("join_timeout", self.join_timeout, Duration::from_millis(1)),
            (
                "publish_timeout",
                self.publish_timeout,
                Duration::from_millis(1),
            ),
        ] {
            if value < least {
                return Err(value_error(
                    &format!("broker.kafka.{key}"),
                    &format!(
                        "must be at least {}",
                        humantime_serde::re::humantime::format_duration(least)
                    ),
                ));
            }
        }
        if self.max_poll_interval < self.session_timeout {
            return Err(value_error(
                "broker.kafka.max_poll_interval",
                "must be at least `session_timeout` (librdkafka refuses less)",
            ));
        }
        Ok(())
    }
}

/// `[broker.mqtt]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// A stable client id: each subscription's session is then persistent (client id
    /// `<client_id>.<subscriber>`), so what was unacknowledged when a connection dropped
    /// comes back (at-least-once). Without one, sessions are clean (at-most-once).
    pub client_id: Option<String>,
    /// How long the broker keeps a persistent session while its client is away.
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            client_id: None,
            session_expiry: Duration::from_secs(3600),
        }
    }
}

/// `[broker.rabbitmq]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// The durable topic exchange every topic is published to (the topic is the
    /// routing key).
    pub exchange: String,
    /// Declare group queues as quorum queues (replicated; the broker counts deliveries).
    pub quorum: bool,
    /// Publish as `mandatory`: a message no queue is bound for is an error instead of
    /// being dropped by the broker.
    pub mandatory: bool,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        RabbitMqConfig {
            exchange: "transport".into(),
            quorum: false,
            mandatory: false,
        }
    }
}

/// `[broker.jetstream]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// Streams to bind (created when missing). A topic no listed stream covers is
    /// published into the stream the server finds capturing it, or else gets a stream of
    /// its own, named `stream_prefix` + the topic (`.` -> `_`, other characters escaped).
    pub streams: Vec<StreamBinding>,
    /// Prefix of the streams created per topic.
    pub stream_prefix: String,
    /// `file` or `memory`, for streams created here.
    pub storage: String,
    /// How long messages are kept in streams created here (0 = no limit).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How many bytes a stream created here keeps at most; the oldest messages go first
    /// (0 = no limit).
    pub max_bytes: u64,
    /// How long the server waits for an ack before redelivering (after a crash, work
    /// comes back this soon).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacknowledged deliveries a consumer may have out at once.
    pub max_ack_pending: i64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            streams: Vec::new(),
            stream_prefix: "TRANSPORT_".into(),
            storage: "file".into(),
            max_age: JetStreamConfig::DEFAULT_MAX_AGE,
            max_bytes: JetStreamConfig::DEFAULT_MAX_BYTES,
            ack_wait: Duration::from_secs(10),
            max_ack_pending: 10_000,
        }
    }
}

impl JetStreamConfig {
    /// How long streams the JetStream backend creates keep messages by default: 7 days.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// How many bytes a stream the JetStream backend creates keeps by default: 1 GiB.
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

    /// Checks `[broker.jetstream]`: every error names its key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.storage.as_str(), "file" | "memory") {
            return Err(value_error(
                "broker.jetstream.storage",
                "must be `file` or `memory`",
            ));
        }
        if self.ack_wait.is_zero() {
            return Err(value_error(
                "broker.jetstream.ack_wait",
                "must be longer than 0 (the server would redeliver at once)",
            ));
        }
        if self.max_ack_pending <= 0 {
            return Err(value_error(
                "broker.jetstream.max_ack_pending",
                "must be at least 1",
            ));
        }
        if i64::try_from(self.max_bytes).is_err() {
            return Err(value_error(
                "broker.jetstream.max_bytes",
                "must be at most 2^63 - 1",
            ));
        }
        for (index, binding) in self.streams.iter().enumerate() {
            if binding.name.is_empty()
                || binding
                    .name
                    .chars()
                    .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
            {
                return Err(value_error(
                    &format!("broker.jetstream.streams[{index}].name"),
                    "must be non-empty, without `.`, `*`, `>`, `/`, `\\` or whitespace",
                ));
            }
            if binding.subjects.is_empty() || binding.subjects.iter().any(String::is_empty) {
                return Err(value_error(
                    &format!("broker.jetstream.streams[{index}].subjects"),
                    "must list at least one non-empty subject",
                ));
            }
        }
        Ok(())
    }
}

/// A JetStream stream named in config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamBinding {
    /// Stream name.
    pub name: String,
    /// Subjects it captures (NATS wildcards allowed: `orders.*`, `sensor.>`).
    pub subjects: Vec<String>,
}

/// `[broker.redis]`: Redis streams settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// The entry field holding the payload.
    pub payload_field: String,
    /// The entry field holding the key.
    pub key_field: String,
    /// Approximate maximum stream length (`XADD MAXLEN ~`); unlimited when absent.
    pub max_len: Option<usize>,
    /// Entries pending this long with a consumer are claimed by another (a crashed
    /// consumer's work comes back this soon); at least 100 ms. The entries of running
    /// (or queued) handlers are kept fresh at least every third of it.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// How often pending entries are checked for claiming; shorter than `claim_idle`.
    #[serde(with = "humantime_serde")]
    pub claim_interval: Duration,
    /// Where a new group starts: `earliest` (the whole stream) or `latest`.
    pub group_start: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            payload_field: "payload".into(),
            key_field: "key".into(),
            max_len: None,
            claim_idle: Duration::from_secs(5),
            claim_interval: Duration::from_secs(1),
            group_start: "earliest".into(),
        }
    }
}

/// The shortest `broker.redis.claim_idle` accepted.
const MIN_CLAIM_IDLE: Duration = Duration::from_millis(100);

impl RedisConfig {
    /// Checks the `[broker.redis]` values that parse but cannot work; the error names
    /// the key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.group_start.as_str(), "earliest" | "latest") {
            return Err(value_error(
                "broker.redis.group_start",
                "must be `earliest` or `latest`",
            ));
        }
        if self.payload_field.is_empty() || self.payload_field == self.key_field {
            return Err(value_error(
                "broker.redis.payload_field",
                "must be non-empty and differ from `key_field`",
            ));
        }
        if self.key_field.is_empty() {
            return Err(value_error("broker.redis.key_field", "must not be empty"));
        }
        if self.claim_idle < MIN_CLAIM_IDLE {
            // Zero would let every consumer take over every other one's running work; the
            // entries of running handlers are refreshed every third of it, which must
            // stay well above a round trip.
            return Err(value_error(
                "broker.redis.claim_idle",
                "must be at least 100ms (entries pending this long are taken over)",
            ));
        }
        if self.claim_interval.is_zero() {
            return Err(value_error(
                "broker.redis.claim_interval",
                "must be more than 0",
            ));
        }
        if self.claim_interval >= self.claim_idle {
            // Take-overs are looked for once per interval: one as long as claim_idle
            // would leave a crashed consumer's work waiting up to twice claim_idle.
            // (Running handlers' entries are refreshed at least every third of
            // claim_idle, whatever the interval.)
            return Err(value_error(
                "broker.redis.claim_interval",
                "must be shorter than `broker.redis.claim_idle`",
            ));
        }
        if self.max_len == Some(0) {
            return Err(value_error(
                "broker.redis.max_len",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        Ok(())
    }
}

/// `[subscriber]`: settings every subscriber gets unless overridden.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Handlers running at once per subscriber (1 keeps order).
    pub concurrency: usize,
    /// Deliveries fetched ahead of the handlers (1024 by default: Redis streams reads half
    /// of it per `XREADGROUP`, the batch a tuned raw client reads; JetStream pulls up to
    /// it). Lower it for very large messages.
    pub prefetch: usize,
    /// Attempts in all before dead-lettering (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Upper bound of the retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Growth factor of the delay per attempt.
    pub backoff_multiplier: f64,
    /// Dead-letter topic; `{topic}` is replaced by the subscriber's topic.
    pub dead_letter: String,
    /// How long one run of the handler may take; a handler still running then is
    /// cancelled and counts as a failed attempt (retried, then dead-lettered). A
    /// handler that blocks its thread without ever yielding cannot be cancelled: with
    /// `concurrency > 1` it is left running on its own task while the subscriber goes on.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Duration,
    /// Retry a failed message in place, before taking the next one, so that with
    /// `concurrency = 1` messages are handled strictly in the order received even
    /// across retries. Off by default: a failed message is then handed back to the
    /// broker (where it redelivers) and later messages may overtake it.
    pub ordered: bool,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            concurrency: 1,
            prefetch: 1024,
            max_attempts: 3,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            backoff_multiplier: 2.0,
            dead_letter: "{topic}.dlq".into(),
            handler_timeout: Duration::from_secs(60),
            ordered: false,
        }
    }
}

/// `[subscribers."Name"]`: any subset of [`SubscriberConfig`], plus the group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriberOverride {
    /// See [`SubscriberConfig::concurrency`].
    pub concurrency: Option<usize>,
    /// See [`SubscriberConfig::prefetch`].
    pub prefetch: Option<usize>,
    /// See [`SubscriberConfig::max_attempts`].
    pub max_attempts: Option<u32>,
    /// See [`SubscriberConfig::backoff`].
    #[serde(with = "humantime_serde::option")]
    pub backoff: Option<Duration>,
    /// See [`SubscriberConfig::backoff_max`].
    #[serde(with = "humantime_serde::option")]
    pub backoff_max: Option<Duration>,
    /// See [`SubscriberConfig::backoff_multiplier`].
    pub backoff_multiplier: Option<f64>,
    /// See [`SubscriberConfig::dead_letter`].
    pub dead_letter: Option<String>,
    /// See [`SubscriberConfig::handler_timeout`].
    #[serde(with = "humantime_serde::option")]
    pub handler_timeout: Option<Duration>,
    /// See [`SubscriberConfig::ordered`].
    pub ordered: Option<bool>,
    /// Replaces the group declared in the attribute.
    pub group: Option<String>,
    /// The broker-side consumer to use (JetStream: an existing durable's name) instead
    /// of the one the backend derives from group and topic.
    pub consumer: Option<String>,
}

/// `[publisher]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Codec of `Publisher::publish` for serde values: `json` or `msgpack`.
    pub codec: String,
    /// Headers a reply copies from its request (trace context, request ids).
    pub propagate_headers: Vec<String>,
    /// Every publish a handler makes carries a W3C `traceparent`, a child of its delivery's
    /// trace context, and a delivery without one starts a trace (see [`crate::trace`]). A
    /// message that already has one keeps it.
    pub trace_context: bool,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            codec: "json".into(),
            propagate_headers: ["traceparent", "tracestate", "x-request-id", "x-trace-id"]
                .map(String::from)
                .to_vec(),
            trace_context: true,
        }
    }
}

/// `[shutdown]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight handlers may run once shutdown begins.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long disconnecting from the broker (flushing acknowledgements) may take once
    /// the handlers are done; shutdown finishes by then even while the broker is down.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` (the Prometheus text format) here, from a recorder the App
    /// installs at start (feature `prometheus`); `127.0.0.1:0` picks a free port
    /// ([`Running::metrics_address`](crate::Running::metrics_address)). Unset: no
    /// endpoint, and the metrics go to whatever recorder the application installed.
    pub address: Option<std::net::SocketAddr>,
}

/// How often and how patiently a failing message is retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub backoff: Duration,
    /// Upper bound of the delay.
    pub backoff_max: Duration,
    /// Growth factor of the delay per attempt.
    pub multiplier: f64,
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let factor = self.multiplier.max(1.0).powi(exponent);
        let delay = self.backoff.as_secs_f64() * factor;
        if !delay.is_finite() || delay >= self.backoff_max.as_secs_f64() {
            self.backoff_max
        } else {
            Duration::from_secs_f64(delay)
        }
    }
}

/// One subscriber's settings once defaults and overrides are merged.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveSubscriber {
    /// Handlers at once.
    pub concurrency: usize,
    /// Deliveries fetched ahead.
    pub prefetch: usize,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Dead-letter topic template.
    pub dead_letter: String,
    /// Longest run of the handler.
    pub handler_timeout: Duration,
    /// Retries in place, keeping order.
    pub ordered: bool,
    /// Group override.
    pub group: Option<String>,
    /// Broker-side consumer name override.
    pub consumer: Option<String>,
}

impl Config {
    /// Reads `TRANSPORT_CONFIG` (or `transport.toml` if present) and `TRANSPORT_*`.
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var_os(CONFIG_FILE_ENV) {
            Some(path) => Self::from_file(Path::new(&path)),
            None if Path::new(DEFAULT_FILE).is_file() => Self::from_file(Path::new(DEFAULT_FILE)),
            None => Self::load(Figment::from(Serialized::defaults(Config::default()))),
        }
    }

    /// Reads `path` (which must exist), with `TRANSPORT_*` variables on top.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        // opened here for a clear error when it is missing or unreadable; figment reads
        // it, so its errors name the file
        std::fs::File::open(path).map_err(|source| ConfigError::File {
            path: path.display().to_string(),
            source,
        })?;
        Self::load(Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(path)))
    }

    /// Parses TOML text, without looking at the environment.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()?;
        config.validate()?;
        Ok(config)
    }

    fn load(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.merge(environment()).extract()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if SerdeCodec::from_name(&self.publisher.codec).is_none() {
            return Err(ConfigError::UnknownCodec {
                key: "publisher.codec".into(),
                name: self.publisher.codec.clone(),
                known: SerdeCodec::NAMES.join(", "),
            });
        }
        self.broker.jetstream.validate()?;
        self.broker.redis.validate()?;
        self.broker.kafka.validate()?;
        if self.broker.queue_capacity == 0 {
            return Err(value_error("broker.queue_capacity", "must be at least 1"));
        }
        if self.broker.max_message_bytes == 0 {
            return Err(value_error(
                "broker.max_message_bytes",
                "must be at least 1",
            ));
        }
        if self.broker.connect_timeout.is_zero() {
            return Err(value_error("broker.connect_timeout", "must be more than 0"));
        }
        if self.shutdown.close_timeout.is_zero() {
            return Err(value_error("shutdown.close_timeout", "must be more than 0"));
        }
        if self
            .publisher
            .propagate_headers
            .iter()
            .any(|h| h.trim().is_empty())
        {
            return Err(value_error(
                "publisher.propagate_headers",
                "must not hold an empty name",
            ));
        }
        check_subscriber("subscriber", &self.subscriber.to_override())?;
        check_effective("subscriber", &self.subscriber(""))?;
        for (name, over) in &self.subscribers {
            let section = format!("subscribers.\"{name}\"");
            check_subscriber(&section, over)?;
            check_effective(&section, &self.subscriber(name))?;
        }
        Ok(())
    }

    /// The publisher's codec (validated by [`Config::validate`]).
    pub fn publisher_codec(&self) -> SerdeCodec {
        SerdeCodec::from_name(&self.publisher.codec).unwrap_or_default()
    }

    /// The settings of the subscriber called `name`.
    ///
    /// Sections are matched case-insensitively (`TRANSPORT_SUBSCRIBERS__SAVERSERVICE__SAVE__CONCURRENCY`
    /// sets `[subscribers."SaverService::save"] concurrency`); where both spellings are
    /// present, the exactly spelled section applies first and the others on top.
    pub fn subscriber(&self, name: &str) -> EffectiveSubscriber {
        let base = &self.subscriber;
        let mut over = self.subscribers.get(name).cloned().unwrap_or_default();
        for (key, other) in &self.subscribers {
            if key != name && key.eq_ignore_ascii_case(name) {
                over.merge(other);
            }
        }
        EffectiveSubscriber {
            concurrency: over.concurrency.unwrap_or(base.concurrency),
            prefetch: over.prefetch.unwrap_or(base.prefetch),
            retry: RetryPolicy {
                max_attempts: over.max_attempts.unwrap_or(base.max_attempts),
                backoff: over.backoff.unwrap_or(base.backoff),
                backoff_max: over.backoff_max.unwrap_or(base.backoff_max),
                multiplier: over.backoff_multiplier.unwrap_or(base.backoff_multiplier),
            },
            dead_letter: over.dead_letter.unwrap_or_else(|| base.dead_letter.clone()),
            handler_timeout: over.handler_timeout.unwrap_or(base.handler_timeout),
            ordered: over.ordered.unwrap_or(base.ordered),
            group: over.group,
            consumer: over.consumer,
        }
    }

    /// Whether `[subscribers."name"]` (in any letter case) is present.
    pub fn has_subscriber_section(&self, name: &str) -> bool {
        self.subscribers
            .keys()
            .any(|k| k.eq_ignore_ascii_case(name))
    }

    /// A configuration for one test: the in-process broker under a name of its own, so
    /// tests running in parallel in one process never share queues (or steal each other's
    /// group messages), short retry delays, and a short drain. Environment variables and
    /// `transport.toml` are not read.
    ///
    /// ```
    /// let a = transport::Config::for_test();
    /// let b = transport::Config::for_test();
    /// assert_ne!(a.broker.name, b.broker.name);
    /// ```
    pub fn for_test() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut config = Config::default();
        config.broker.name = format!(
            "test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        config.subscriber.backoff = Duration::from_millis(10);
        config.subscriber.backoff_max = Duration::from_millis(100);
        config.shutdown.drain_timeout = Duration::from_secs(5);
        config
    }
}

impl SubscriberOverride {
    /// Takes every value `other` sets.
    fn merge(&mut self, other: &SubscriberOverride) {
        macro_rules! take {
            ($($field:ident),*) => {$(
                if other.$field.is_some() {
                    self.$field.clone_from(&other.$field);
                }
            )*};
        }
        take!(
            concurrency,
            prefetch,
            max_attempts,
            backoff,
            backoff_max,
            backoff_multiplier,
            dead_letter,
            handler_timeout,
            ordered,
            group,
            consumer
        );
    }
}

impl SubscriberConfig {
    fn to_override(&self) -> SubscriberOverride {
        SubscriberOverride {
            concurrency: Some(self.concurrency),
            prefetch: Some(self.prefetch),
            max_attempts: Some(self.max_attempts),
            backoff: Some(self.backoff),
            backoff_max: Some(self.backoff_max),
            backoff_multiplier: Some(self.backoff_multiplier),
            dead_letter: Some(self.dead_letter.clone()),
            handler_timeout: Some(self.handler_timeout),
            ordered: Some(self.ordered),
            group: None,
            consumer: None,
        }
    }
}

/// The `TRANSPORT_*` variables as a figment provider: `__` separates levels, names are
/// matched case-insensitively, `TRANSPORT_SUBSCRIBERS__<NAME>__<KEY>` addresses
/// `[subscribers."<Name>"]` (`__` inside `<NAME>` standing for `::`), and a variable that
/// names no setting is ignored with one warning (a platform may set `TRANSPORT_*`
/// variables of its own: Kubernetes does for a Service called `transport`).
fn environment() -> Env {
    let known = Arc::new(KnownKeys::new());
    let unknown: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name != CONFIG_FILE_ENV)
        .filter(|name| {
            name.get(..ENV_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                && known.path(&name[ENV_PREFIX.len()..]).is_none()
        })
        .collect();
    if !unknown.is_empty() {
        tracing::warn!(
            variables = %unknown.join(", "),
            "ignoring environment variables that name no transport setting"
        );
    }
    Env::prefixed(ENV_PREFIX).filter_map(move |key| known.path(key.as_str()).map(Into::into))
}

/// Every setting's path, from the defaults, to tell settings from stray variables.
struct KnownKeys {
    tree: serde_json::Value,
    subscriber: serde_json::Value,
}

impl KnownKeys {
    fn new() -> Self {
        KnownKeys {
            tree: serde_json::to_value(Config::default()).unwrap_or_default(),
            subscriber: serde_json::to_value(SubscriberOverride::default()).unwrap_or_default(),
        }
    }

    /// The figment key path (`.`-separated, lowercase) a variable name (prefix
    /// stripped) stands for, if it names a setting.
    fn path(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        if name == "config" {
            return None;
        }
        let parts: Vec<&str> = name.split("__").collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        if parts[0] == "subscribers" {
            // subscribers__<name segments>__<key>
            let (key, middle) = parts[1..].split_last()?;
            if middle.is_empty() || self.subscriber.get(*key).is_none() {
                return None;
            }
            return Some(format!("subscribers.{}.{key}", middle.join("::")));
        }
        let mut node = &self.tree;
        for part in &parts {
            node = node.as_object()?.get(*part)?;
        }
        Some(parts.join("."))
    }
}

fn value_error(key: &str, reason: &str) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Checks between two settings, once defaults and overrides are merged.
fn check_effective(section: &str, settings: &EffectiveSubscriber) -> Result<(), ConfigError> {
    if settings.retry.backoff > settings.retry.backoff_max {
        return Err(value_error(
            &format!("{section}.backoff"),
            &format!(
                "must not exceed backoff_max ({})",
                humantime_serde::re::humantime::format_duration(settings.retry.backoff_max)
            ),
        ));
    }
    if settings.ordered && settings.concurrency > 1 {
        return Err(value_error(
            &format!("{section}.ordered"),
            &format!(
                "needs concurrency = 1 (it is {}): handlers running in parallel have no order",
                settings.concurrency
            ),
        ));
    }
    Ok(())
}

fn check_subscriber(section: &str, over: &SubscriberOverride) -> Result<(), ConfigError> {
    if over.handler_timeout.is_some_and(|t| t.is_zero()) {
        return Err(value_error(
            &format!("{section}.handler_timeout"),
            "must be more than 0",
        ));
    }
    if over.concurrency == Some(0) {
        return Err(value_error(
            &format!("{section}.concurrency"),
            "must be at least 1",
        ));
    }
    if over.prefetch == Some(0) {
        return Err(value_error(
            &format!("{section}.prefetch"),
            "must be at least 1",
        ));
    }
    if over.max_attempts == Some(0) {
        return Err(value_error(
            &format!("{section}.max_attempts"),
            "must be at least 1",
        ));
    }
    if let Some(m) = over.backoff_multiplier
        && !(m.is_finite() && m >= 1.0)
    {
        return Err(value_error(
            &format!("{section}.backoff_multiplier"),
            "must be a finite number >= 1",
        ));
    }
    if over
        .dead_letter
        .as_deref()
        .is_some_and(|d| d.trim().is_empty())
    {
        return Err(value_error(
            &format!("{section}.dead_letter"),
            "must not be empty",
        ));
    }
    if over.group.as_deref().is_some_and(|g| g.trim().is_empty()) {
        return Err(value_error(
            &format!("{section}.group"),
            "must not be empty",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_overrides_win() {
        let config = Config::from_toml(
            r#"
            [subscriber]
            max_attempts = 5
            backoff = "250ms"
            [subscribers."Saver::save"]
            concurrency = 4
            group = "other"
            "#,
        )
        .unwrap();
        let saver = config.subscriber("Saver::save");
        assert_eq!(saver.concurrency, 4);
        assert_eq!(saver.retry.max_attempts, 5);
        assert_eq!(saver.retry.backoff, Duration::from_millis(250));
        assert_eq!(saver.group.as_deref(), Some("other"));
        assert_eq!(config.subscriber("x").concurrency, 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = Config::from_toml("[broker]\nkinde = \"nats\"").unwrap_err();
        assert!(err.to_string().contains("kinde"), "{err}");
        let err = Config::from_toml("[subscriber]\nbackoff = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("backoff"), "{err}");
        let err = Config::from_toml("[subscriber]\nmax_attempts = 0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `subscriber.max_attempts`: must be at least 1"
        );
        let err = Config::from_toml("[publisher]\ncodec = \"xml\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown codec `xml` for `publisher.codec` in config (known: json, msgpack)"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail error type
    fn stray_environment_variables_are_ignored() {
        figment::Jail::expect_with(|jail| {
            // what Kubernetes injects for a Service called `transport`
            jail.set_env("TRANSPORT_SERVICE_HOST", "10.0.0.7");
            jail.set_env("TRANSPORT_PORT_8080_TCP", "tcp://10.0.0.7:8080");
            jail.set_env("TRANSPORT_BROKER__NOPE", "1");
            jail.set_env("TRANSPORT_BROKER__KIND", "memory");
            jail.set_env("TRANSPORT_SUBSCRIBER__MAX_ATTEMPTS", "7");
            let config = Config::from_env().map_err(|e| e.to_string())?;
            assert_eq!(config.subscriber.max_attempts, 7);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail error type
    fn unknown_keys_in_the_file_stay_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("transport.toml", "[broker]\nkinde = \"nats\"")?;
            let error = Config::from_env().unwrap_err().to_string();
            assert!(error.contains("kinde"), "{error}");
            assert!(error.contains("transport.toml"), "names the file: {error}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail error type
    fn per_subscriber_settings_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "transport.toml",
                "[subscribers.\"SaverService::save\"]\nmax_attempts = 9\nconcurrency = 2",
            )?;
            jail.set_env(
                "TRANSPORT_SUBSCRIBERS__SAVERSERVICE__SAVE__CONCURRENCY",
                "8",
            );
            jail.set_env(
                "TRANSPORT_SUBSCRIBERS__RECORD_READING__HANDLER_TIMEOUT",
                "2s",
            );
            jail.set_env("TRANSPORT_SUBSCRIBERS__SAVERSERVICE__SAVE__NOPE", "1");
            let config = Config::from_env().map_err(|e| e.to_string())?;
            let saver = config.subscriber("SaverService::save");
            assert_eq!(saver.concurrency, 8, "the environment wins");
            assert_eq!(saver.retry.max_attempts, 9, "the file's other values stay");
            assert_eq!(
                config.subscriber("record_reading").handler_timeout,
                Duration::from_secs(2)
            );
            assert!(config.has_subscriber_section("SAVERSERVICE::SAVE"));
            Ok(())
        });
    }

    #[test]
    fn numbers_that_break_a_backend_are_errors_naming_the_key() {
        for (toml, key) in [
            (
                "[broker]\nmax_message_bytes = 0",
                "broker.max_message_bytes",
            ),
            (
                "[broker]\nconnect_timeout = \"0s\"",
                "broker.connect_timeout",
            ),
            (
                "[subscriber]\nhandler_timeout = \"0s\"",
                "subscriber.handler_timeout",
            ),
            ("[subscriber]\nbackoff = \"20s\"", "subscriber.backoff"),
            (
                "[shutdown]\nclose_timeout = \"0s\"",
                "shutdown.close_timeout",
            ),
            (
                "[subscribers.\"A::b\"]\nordered = true\nconcurrency = 2",
                "subscribers.\"A::b\".ordered",
            ),
            ("[broker.kafka]\npartitions = 0", "broker.kafka.partitions"),
            (
                "[broker.kafka]\nreplication = 0",
                "broker.kafka.replication",
            ),
            (
                "[broker.kafka]\nsession_timeout = \"100ms\"",
                "broker.kafka.session_timeout",
            ),
            (
                "[broker.kafka]\nsession_timeout = \"30s\"\nmax_poll_interval = \"10s\"",
                "broker.kafka.max_poll_interval",
            ),
            (
                "[broker.kafka]\npublish_timeout = \"0s\"",
                "broker.kafka.publish_timeout",
            ),
        ] {
            let error = Config::from_toml(toml).unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{toml}: {error}");
        }
    }

    #[test]
    fn passwords_never_show() {
        let config = Config::from_toml(
            "[broker]\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n\
             [broker.kafka.properties]\n\"sasl.password\" = \"hunter2\"",
        )
        .unwrap();
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("sasl.password"), "{debug}");
        assert!(debug.contains("redis://:***@127.0.0.1:6379"), "{debug}");
        let error = crate::Error::from(crate::BackendError::Connect {
            backend: "redis",
            url: "redis://admin:hunter2@db:6379".into(),
            reason: "connection refused".into(),
        });
        for text in [
            error.to_string(),
            format!("{error:?}"),
            format!("{error:#?}"),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert_eq!(
            redact_url("nats://a:b@h1:4222,nats://tok@h2:4222"),
            "nats://a:***@h1:4222,nats://***@h2:4222"
        );
        // unescaped `#`, `?`, `/` in a password
        for url in [
            "redis://:p#ss@host:6379",
            "redis://u:p?ss@host:6379/0",
            "redis://u:p/ss@host:6379/0?x=1",
        ] {
            let redacted = redact_url(url);
            assert!(!redacted.contains("ss@"), "{url} -> {redacted}");
            assert!(
                redacted.ends_with(&url[url.rfind('@').unwrap_or(0)..]),
                "{redacted}"
            );
        }
    }

    #[test]
    fn errors_read_well_in_debug() {
        let error: crate::Error = Config::from_toml("[subscriber]\nbackoff = \"soon\"")
            .unwrap_err()
            .into();
        let debug = format!("{error:?}");
        assert!(
            debug.starts_with("invalid configuration: `subscriber.backoff`"),
            "{debug}"
        );
        assert!(!debug.contains("default."), "{debug}");
        assert!(!debug.contains("Config("), "{debug}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        assert_eq!(policy.delay_after(1), Duration::from_millis(100));
        assert_eq!(policy.delay_after(2), Duration::from_millis(200));
        assert_eq!(policy.delay_after(4), Duration::from_millis(800));
        assert_eq!(policy.delay_after(5), Duration::from_secs(1));
        assert_eq!(policy.delay_after(u32::MAX), Duration::from_secs(1));
    }
}
