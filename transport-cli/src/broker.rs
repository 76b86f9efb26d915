//! The brokers a consumer can be generated for: the cargo feature of `transport` each one
//! needs, where it listens by default, and which ones the transport crate has a backend
//! for. This table is the one place that says so.

use clap::ValueEnum;

use crate::error::CliError;

/// A broker, as `broker.kind` names it in `transport.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Broker {
    /// The embedded in-process broker: nothing to install.
    Memory,
    /// NATS core (at-most-once).
    Nats,
    /// NATS JetStream (at-least-once).
    Jetstream,
    /// Redis pub/sub (at-most-once).
    Redis,
    /// Redis streams (at-least-once).
    RedisStreams,
    /// RabbitMQ (AMQP 0.9.1).
    Rabbitmq,
    /// An MQTT 5 broker.
    Mqtt,
    /// Kafka (librdkafka, built from source: needs a C toolchain and make).
    Kafka,
    /// NSQ (the transport crate's own client).
    Nsq,
}

/// What the generated crate needs for a broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    /// `broker.kind` in `transport.toml`.
    pub kind: &'static str,
    /// The cargo feature of `transport` with its backend; `None` when always built in.
    pub feature: Option<&'static str>,
    /// `broker.url` for a broker on this machine with its default port.
    pub url: Option<&'static str>,
    /// Whether the transport crate has the backend (and its feature) today.
    pub supported: bool,
}

impl Broker {
    /// Everything about this broker, from the one table.
    pub fn info(self) -> BrokerInfo {
        let (kind, feature, url, supported) = match self {
            Broker::Memory => ("memory", None, None, true),
            Broker::Nats => ("nats", Some("nats"), Some("nats://127.0.0.1:4222"), true),
            Broker::Jetstream => (
                "jetstream",
                Some("nats"),
                Some("nats://127.0.0.1:4222"),
                true,
            ),
            Broker::Redis => ("redis", Some("redis"), Some("redis://127.0.0.1:6379"), true),
            Broker::RedisStreams => (
                "redis-streams",
                Some("redis"),
                Some("redis://127.0.0.1:6379"),
                true,
            ),
            Broker::Rabbitmq => (
                "rabbitmq",
                Some("rabbitmq"),
                Some("amqp://guest:guest@127.0.0.1:5672/%2f"),
                true,
            ),
            Broker::Mqtt => ("mqtt", Some("mqtt"), Some("mqtt://127.0.0.1:1883"), true),
            Broker::Kafka => ("kafka", Some("kafka"), Some("kafka://127.0.0.1:9092"), true),
            Broker::Nsq => ("nsq", Some("nsq"), Some("nsq://127.0.0.1:4150"), true),
        };
        BrokerInfo {
            kind,
            feature,
            url,
            supported,
        }
    }

    /// Every broker, in the order of `--help`.
    pub fn all() -> &'static [Broker] {
        Broker::value_variants()
    }

    /// The broker's info, or an error naming the brokers that work when the transport
    /// crate has no backend for it yet.
    pub fn supported_info(self) -> Result<BrokerInfo, CliError> {
        let info = self.info();
        if info.supported {
            return Ok(info);
        }
        Err(CliError::UnsupportedBroker {
            broker: info.kind,
            feature: info.feature.unwrap_or(info.kind),
            supported: Broker::all()
                .iter()
                .map(|b| b.info())
                .filter(|i| i.supported)
                .map(|i| i.kind)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_share_features_as_documented() {
        assert_eq!(Broker::Jetstream.info().feature, Some("nats"));
        assert_eq!(Broker::RedisStreams.info().feature, Some("redis"));
        assert_eq!(Broker::Memory.info().feature, None);
        // `broker.kind` and the command-line value are the same word
        for broker in Broker::all() {
            let value = broker.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(value.as_deref(), Some(broker.info().kind));
        }
    }

    /// What the command offers is what the transport crate has: every broker a backend
    /// kind of it, behind the feature the generated crate enables.
    #[test]
    fn every_broker_offered_is_a_backend_of_the_transport_crate() {
        for broker in Broker::all() {
            let info = broker.supported_info().expect("supported");
            let kind = transport::backend::KINDS
                .iter()
                .find(|(name, _, _)| *name == info.kind)
                .unwrap_or_else(|| panic!("`{}` is no backend kind", info.kind));
            assert_eq!(info.feature.unwrap_or(""), kind.1, "{}", info.kind);
        }
    }
}
