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
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::codec::SerdeCodec;
use crate::dispatch::RetryPolicy;
use crate::error::ConfigError;

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
}

/// `[broker]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Largest payload accepted, in bytes.
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
    /// consumer's work comes back this soon).
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// How often pending entries are checked for claiming.
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

/// `[subscriber]`: settings every subscriber gets unless overridden.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Handlers running at once per subscriber (1 keeps order).
    pub concurrency: usize,
    /// Deliveries fetched ahead of the handlers.
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
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            concurrency: 1,
            prefetch: 256,
            max_attempts: 3,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            backoff_multiplier: 2.0,
            dead_letter: "{topic}.dlq".into(),
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
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            codec: "json".into(),
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
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(30),
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
            path: path.display().to_string(),
            source,
        })?;
        Self::load(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(&text)),
        )
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
        let env = Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]);
        let config: Config = figment.merge(env).extract()?;
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
        if !matches!(
            self.broker.redis.group_start.as_str(),
            "earliest" | "latest"
        ) {
            return Err(value_error(
                "broker.redis.group_start",
                "must be `earliest` or `latest`",
            ));
        }
        if self.broker.redis.payload_field.is_empty()
            || self.broker.redis.payload_field == self.broker.redis.key_field
        {
            return Err(value_error(
                "broker.redis.payload_field",
                "must be non-empty and differ from `key_field`",
            ));
        }
        if self.broker.queue_capacity == 0 {
            return Err(value_error("broker.queue_capacity", "must be at least 1"));
        }
        check_subscriber("subscriber", &self.subscriber.to_override())?;
        for (name, over) in &self.subscribers {
            check_subscriber(&format!("subscribers.\"{name}\""), over)?;
        }
        Ok(())
    }

    /// The publisher's codec (validated by [`Config::validate`]).
    pub fn publisher_codec(&self) -> SerdeCodec {
        SerdeCodec::from_name(&self.publisher.codec).unwrap_or_default()
    }

    /// The settings of the subscriber called `name`.
    pub fn subscriber(&self, name: &str) -> EffectiveSubscriber {
        let base = &self.subscriber;
        let over = self.subscribers.get(name).cloned().unwrap_or_default();
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
            group: over.group,
            consumer: over.consumer,
        }
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
            group: None,
            consumer: None,
        }
    }
}

fn value_error(key: &str, reason: &str) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        reason: reason.into(),
    }
}

fn check_subscriber(section: &str, over: &SubscriberOverride) -> Result<(), ConfigError> {
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
}
