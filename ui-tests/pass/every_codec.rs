//! Each built-in codec with a payload type it decodes, and a codec of one's own.
use bytes::Bytes;
use serde::Deserialize;
use transport::CodecError;
use transport::codec::{Codec, Decoder};

#[derive(Deserialize)]
pub struct Reading {
    pub celsius: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoReading {
    #[prost(double, tag = "1")]
    pub celsius: f64,
}

pub struct Upper;
impl Codec for Upper {
    const NAME: &'static str = "upper";
    const CONTENT_TYPE: &'static str = "text/plain";
}
impl Decoder<String> for Upper {
    fn decode(payload: &Bytes) -> Result<String, CodecError> {
        Ok(String::from_utf8_lossy(payload).to_uppercase())
    }
}

#[transport::subscriber(topic = "json", codec = "json")]
async fn json(_r: Reading) {}
#[transport::subscriber(topic = "msgpack", codec = "msgpack")]
async fn msgpack(_r: Reading) {}
#[transport::subscriber(topic = "protobuf", codec = "protobuf")]
async fn protobuf(_r: ProtoReading) {}
#[transport::subscriber(topic = "text", codec = "text")]
async fn text(_s: String) {}
#[transport::subscriber(topic = "bytes", codec = "bytes")]
async fn bytes(_b: Bytes) {}
#[transport::subscriber(topic = "vec", codec = "bytes")]
async fn vec(_b: Vec<u8>) {}
#[transport::subscriber(topic = "upper", codec = Upper)]
async fn upper(_s: String) {}

fn main() {
    let codecs: Vec<&str> = transport::registry::registrations().iter().map(|r| r.codec).collect();
    assert_eq!(codecs, ["bytes", "json", "msgpack", "protobuf", "text", "upper", "bytes"]);
}
