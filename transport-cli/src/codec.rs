//! The codecs a subscriber can be generated with, and the Rust each one needs: the
//! payload type, the typed topic's codec parameter, a sample value for the test.

use clap::ValueEnum;

/// A built-in codec of `transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Codec {
    /// JSON (serde).
    Json,
    /// MessagePack (serde).
    Msgpack,
    /// Protocol Buffers (prost).
    Protobuf,
    /// UTF-8 text into `String`.
    Text,
    /// Raw bytes into `Vec<u8>`.
    Bytes,
}

/// What the payload of a topic is, per codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadShape {
    /// A struct of our own, with serde derives and a JSON schema.
    SerdeStruct,
    /// A struct of our own, with `prost::Message`.
    ProstStruct,
    /// `String`.
    Text,
    /// `Vec<u8>`.
    Bytes,
}

impl Codec {
    /// The name as written in `#[subscriber(codec = "...")]`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::Msgpack => "msgpack",
            Codec::Protobuf => "protobuf",
            Codec::Text => "text",
            Codec::Bytes => "bytes",
        }
    }

    /// The codec type's name in `transport::codec`.
    pub fn type_name(self) -> &'static str {
        match self {
            Codec::Json => "Json",
            Codec::Msgpack => "MsgPack",
            Codec::Protobuf => "Protobuf",
            Codec::Text => "Text",
            Codec::Bytes => "RawBytes",
        }
    }

    /// The codec whose type in `transport::codec` is named `type_name`.
    pub fn from_type_name(type_name: &str) -> Option<Codec> {
        Codec::value_variants()
            .iter()
            .copied()
            .find(|c| c.type_name() == type_name)
    }

    /// What the payload is.
    pub fn shape(self) -> PayloadShape {
        match self {
            Codec::Json | Codec::Msgpack => PayloadShape::SerdeStruct,
            Codec::Protobuf => PayloadShape::ProstStruct,
            Codec::Text => PayloadShape::Text,
            Codec::Bytes => PayloadShape::Bytes,
        }
    }

    /// The payload type when the codec fixes it (`String`, `Vec<u8>`).
    pub fn fixed_payload(self) -> Option<&'static str> {
        match self.shape() {
            PayloadShape::Text => Some("String"),
            PayloadShape::Bytes => Some("Vec<u8>"),
            PayloadShape::SerdeStruct | PayloadShape::ProstStruct => None,
        }
    }

    /// `transport::Topic<P>` or `transport::Topic<P, transport::codec::C>`.
    pub fn topic_type(self, payload: &str) -> String {
        match self {
            Codec::Json => format!("transport::Topic<{payload}>"),
            other => format!(
                "transport::Topic<{payload}, transport::codec::{}>",
                other.type_name()
            ),
        }
    }

    /// `transport::Topic::new("t")`, with `.with_codec::<C>()` unless JSON.
    pub fn topic_value(self, topic: &str) -> String {
        match self {
            Codec::Json => format!("transport::Topic::new({topic:?})"),
            other => format!(
                "transport::Topic::new({topic:?}).with_codec::<transport::codec::{}>()",
                other.type_name()
            ),
        }
    }

    /// An expression of the payload type, for the generated test.
    pub fn sample(self, payload: &str) -> String {
        match self.shape() {
            PayloadShape::SerdeStruct | PayloadShape::ProstStruct => {
                format!("{payload} {{ id: 1, body: \"hello\".into() }}")
            }
            PayloadShape::Text => "\"hello\".to_string()".into(),
            PayloadShape::Bytes => "b\"hello\".to_vec()".into(),
        }
    }
}
