//! One subscriber to generate: its topic, payload type, typed topic constant and handler
//! method, checked and rendered from the snippet templates. Shared by `new consumer`
//! (the first subscriber) and `add subscriber` (the next ones).

use crate::codec::{Codec, PayloadShape};
use crate::error::CliError;
use crate::names;
use crate::template::{self, Values};

/// A subscriber, its names checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscriber {
    /// The handler method's name.
    pub handler: String,
    /// The topic's name on the broker.
    pub topic: String,
    /// The group, if any.
    pub group: Option<String>,
    /// The codec.
    pub codec: Codec,
    /// The payload type's name (`Orders`, `String`, `Vec<u8>`).
    pub payload: String,
    /// The typed topic constant's name (`ORDERS`).
    pub topic_const: String,
}

impl Subscriber {
    /// Checks the names and derives the rest: the payload type defaults to the topic in
    /// CamelCase (`sensor.readings` -> `SensorReadings`), the constant to the topic in
    /// SCREAMING_SNAKE_CASE.
    pub fn new(
        handler: &str,
        topic: &str,
        group: Option<&str>,
        codec: Codec,
        payload: Option<&str>,
    ) -> Result<Self, CliError> {
        names::method(handler)?;
        names::topic(topic)?;
        if let Some(group) = group {
            names::group(group)?;
        }
        let payload = match (codec.fixed_payload(), payload) {
            (Some(fixed), None) => fixed.to_string(),
            (Some(fixed), Some(given)) if given == fixed => fixed.to_string(),
            (Some(fixed), Some(given)) => {
                return Err(CliError::InvalidName {
                    what: "payload type",
                    value: given.to_string(),
                    reason: format!(
                        "the `{}` codec always decodes into `{fixed}`: leave --payload out",
                        codec.name()
                    ),
                });
            }
            (None, Some(given)) => {
                names::type_name("payload type", given)?;
                given.to_string()
            }
            (None, None) => {
                let derived = names::with_prefix_if_digit("Topic", names::camel_case(topic));
                names::type_name("payload type", &derived).map_err(|_| CliError::InvalidName {
                    what: "payload type",
                    value: derived.clone(),
                    reason: format!(
                        "derived from topic `{topic}`, it is not a Rust type name: name it with --payload"
                    ),
                })?;
                derived
            }
        };
        Ok(Subscriber {
            handler: handler.to_string(),
            topic: topic.to_string(),
            group: group.map(str::to_string),
            codec,
            payload,
            topic_const: names::with_prefix_if_digit("TOPIC_", names::screaming_snake_case(topic)),
        })
    }

    /// The values every snippet of this subscriber uses.
    pub fn values(&self) -> Values {
        let mut values = Values::default();
        values
            .set("handler", &self.handler)
            .set("topic", &self.topic)
            .set("topic_snake", names::snake_case(&self.topic))
            .set("topic_const", &self.topic_const)
            .set("topic_type", self.codec.topic_type(&self.payload))
            .set("topic_value", self.codec.topic_value(&self.topic))
            .set("payload", &self.payload)
            .set("codec", self.codec.name())
            .set(
                "group_argument",
                match &self.group {
                    Some(group) => format!(", group = {group:?}"),
                    None => String::new(),
                },
            );
        values
    }

    /// The payload struct, when the codec does not fix the type.
    pub fn payload_definition(&self) -> Result<String, CliError> {
        match self.codec.shape() {
            PayloadShape::SerdeStruct => template::render(template::SERDE_PAYLOAD, &self.values()),
            PayloadShape::ProstStruct => template::render(template::PROST_PAYLOAD, &self.values()),
            PayloadShape::Text | PayloadShape::Bytes => Ok(String::new()),
        }
    }

    /// The typed topic constant.
    pub fn topic_definition(&self) -> Result<String, CliError> {
        template::render(template::TOPIC_CONST, &self.values())
    }

    /// The handler method; `count` adds one to the service's `handled` counter.
    pub fn method(&self, count: bool) -> Result<String, CliError> {
        let mut values = self.values();
        values.set(
            "count_line",
            if count {
                "        self.handled\n            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);\n"
            } else {
                ""
            },
        );
        template::render(template::SUBSCRIBER, &values)
    }

    /// Whether the payload type is one this subscriber defines (not `String`, `Vec<u8>`).
    pub fn defines_payload(&self) -> bool {
        self.codec.fixed_payload().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_derived_from_the_topic() {
        let sub = Subscriber::new(
            "handle",
            "sensor.readings",
            Some("saver"),
            Codec::Json,
            None,
        )
        .unwrap();
        assert_eq!(sub.payload, "SensorReadings");
        assert_eq!(sub.topic_const, "SENSOR_READINGS");
        let sub = Subscriber::new("handle", "2fa.codes", None, Codec::Msgpack, None).unwrap();
        assert_eq!(sub.payload, "Topic2faCodes");
        assert_eq!(sub.topic_const, "TOPIC_2FA_CODES");
        let sub = Subscriber::new("handle", "raw", None, Codec::Bytes, None).unwrap();
        assert_eq!(sub.payload, "Vec<u8>");
    }

    #[test]
    fn a_payload_name_that_the_codec_fixes_is_refused() {
        let error = Subscriber::new("h", "t", None, Codec::Text, Some("Line")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid payload type `Line`: the `text` codec always decodes into `String`: leave --payload out"
        );
        assert!(Subscriber::new("h", "t", None, Codec::Text, Some("String")).is_ok());
    }

    #[test]
    fn the_method_carries_topic_group_and_counter() {
        let sub =
            Subscriber::new("on_order", "orders", Some("billing"), Codec::Msgpack, None).unwrap();
        let method = sub.method(true).unwrap();
        assert!(
            method.contains("#[subscriber(topic = ORDERS, group = \"billing\")]"),
            "{method}"
        );
        assert!(method.contains("async fn on_order("), "{method}");
        assert!(method.contains("message: Orders,"), "{method}");
        assert!(method.contains("fetch_add(1"), "{method}");
        assert!(!sub.method(false).unwrap().contains("fetch_add"));
        let topic = sub.topic_definition().unwrap();
        assert!(
            topic.contains(
                "pub const ORDERS: transport::Topic<Orders, transport::codec::MsgPack> = transport::Topic::new(\"orders\").with_codec::<transport::codec::MsgPack>();"
            ),
            "{topic}"
        );
    }
}
