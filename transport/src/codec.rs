//! Codecs: how a typed value becomes payload bytes and back.
//!
//! Built in: [`Json`] (`"json"`), [`MsgPack`] (`"msgpack"`), [`Protobuf`] (`"protobuf"`),
//! [`Text`] (`"text"`) and [`RawBytes`] (`"bytes"`). A codec of your own is a type that
//! implements [`Codec`] (its name and content type) plus [`Encoder`] / [`Decoder`] for the
//! payloads it handles; name it in `#[subscriber(codec = MyCodec)]` or
//! `Topic::new(..).with_codec::<MyCodec>()`.
//!
//! ```
//! use transport::codec::{Codec, Decoder, Encoder};
//! use transport::CodecError;
//!
//! /// Comma-separated numbers.
//! struct Csv;
//! impl Codec for Csv {
//!     const NAME: &'static str = "csv";
//!     const CONTENT_TYPE: &'static str = "text/csv";
//! }
//! impl Encoder<Vec<i64>> for Csv {
//!     fn encode(value: &Vec<i64>) -> Result<bytes::Bytes, CodecError> {
//!         let text: Vec<String> = value.iter().map(|n| n.to_string()).collect();
//!         Ok(text.join(",").into())
//!     }
//! }
//! impl Decoder<Vec<i64>> for Csv {
//!     fn decode(payload: &bytes::Bytes) -> Result<Vec<i64>, CodecError> {
//!         let text = std::str::from_utf8(payload).map_err(|e| CodecError::new(Self::NAME, e))?;
//!         text.split(',').map(|s| s.trim().parse().map_err(|e| CodecError::new(Self::NAME, e))).collect()
//!     }
//! }
//! let bytes = Csv::encode(&vec![1, 2, 3]).unwrap();
//! assert_eq!(Csv::decode(&bytes).unwrap(), vec![1, 2, 3]);
//! ```

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;

/// A named wire format.
pub trait Codec: Send + Sync + 'static {
    /// The name used in attributes, registrations and introspection.
    const NAME: &'static str;
    /// The `content-type` header set on published messages.
    const CONTENT_TYPE: &'static str;
}

/// A codec that can encode `T`.
#[diagnostic::on_unimplemented(
    message = "the `{Self}` codec cannot encode `{T}`",
    label = "`{T}` is not encodable with `{Self}`"
)]
pub trait Encoder<T: ?Sized>: Codec {
    /// Encodes `value` into payload bytes.
    fn encode(value: &T) -> Result<Bytes, CodecError>;
}

/// A codec that can decode `T`.
#[diagnostic::on_unimplemented(
    message = "the `{Self}` codec cannot decode `{T}`",
    label = "`{T}` is not decodable with `{Self}`"
)]
pub trait Decoder<T>: Codec {
    /// Decodes payload bytes into a value.
    fn decode(payload: &Bytes) -> Result<T, CodecError>;
}

/// JSON via `serde_json`: payloads implementing `Serialize` / `DeserializeOwned`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl Codec for Json {
    const NAME: &'static str = "json";
    const CONTENT_TYPE: &'static str = "application/json";
}

impl<T: Serialize + ?Sized> Encoder<T> for Json {
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        with_scratch(|buffer| serde_json::to_writer(buffer, value))
            .map_err(|e| CodecError::new(Self::NAME, e))
    }
}

/// Encodes into a buffer kept per thread, then copies the result into a payload of
/// exactly its size ([`payload_of`]): no allocation per message (an encoder writing into
/// a fresh `Vec` grows it, and turning a `Vec` whose capacity exceeds its length into
/// `Bytes` adds a second allocation for the shared header).
fn with_scratch<E>(encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<Bytes, E> {
    use std::cell::RefCell;
    /// Buffers that grew past this are not kept (one huge message does not pin memory).
    const KEEP: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            let encoded = encode(&mut buffer).map(|()| payload_of(&buffer));
            if buffer.capacity() > KEEP {
                *buffer = Vec::new();
            }
            encoded
        }
        // an encoder that encodes while encoding (a `Serialize` impl publishing, say)
        Err(_) => {
            let mut buffer = Vec::new();
            encode(&mut buffer).map(|()| Bytes::from(buffer))
        }
    })
}

/// A payload holding a copy of `bytes`. A small one is cut from a block of
/// [`PAYLOAD_BLOCK`] bytes kept per thread, which it shares (counted) with the payloads
/// cut before it: one allocation per block instead of one per message, and a block whose
/// payloads have all gone is used again as it is. A message published on one thread and
/// dropped on another (every in-process delivery) otherwise takes the allocator's slow
/// path at both ends, each time. What it costs: a payload kept long keeps its block
/// (at most [`PAYLOAD_BLOCK`] bytes) alive; a larger payload gets an allocation of its own.
pub(crate) fn payload_of(bytes: &[u8]) -> Bytes {
    use std::cell::RefCell;
    thread_local! {
        static BLOCK: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
    }
    if bytes.len() > SMALL_PAYLOAD {
        return Bytes::copy_from_slice(bytes);
    }
    BLOCK
        .try_with(|block| {
            let mut block = block.try_borrow_mut().ok()?;
            // (empty: everything written was split off)
            if block.capacity() < bytes.len() + PAYLOAD_ALIGN {
                // the same block again when no payload holds it any more, else a new one
                block.reserve(PAYLOAD_BLOCK);
            }
            // each payload starts on a `PAYLOAD_ALIGN` boundary, as its own allocation would
            // (a decoder's word-at-a-time UTF-8 check needs it)
            block.extend_from_slice(bytes);
            block.extend_from_slice(
                &[0; PAYLOAD_ALIGN][..bytes.len().wrapping_neg() % PAYLOAD_ALIGN],
            );
            let mut payload = block.split().freeze();
            payload.truncate(bytes.len());
            Some(payload)
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Bytes::copy_from_slice(bytes))
}

/// The size of the blocks small payloads are cut from ([`payload_of`]).
const PAYLOAD_BLOCK: usize = 8 * 1024;

/// Where each payload cut from a block starts: a multiple of this, as an allocation of its
/// own does on this platform.
const PAYLOAD_ALIGN: usize = 16;

/// The largest payload cut from a block; larger ones are allocated alone.
const SMALL_PAYLOAD: usize = 1024;

impl<T: DeserializeOwned> Decoder<T> for Json {
    fn decode(payload: &Bytes) -> Result<T, CodecError> {
        // UTF-8 checked once over the whole payload (word at a time) rather than string by
        // string as `from_slice` does (a third of a small message's decode); a payload
        // that is not UTF-8 takes `from_slice`, which accepts what it accepts (invalid
        // bytes in a field the type skips) and otherwise names the place.
        match std::str::from_utf8(payload) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(payload),
        }
        .map_err(|e| CodecError::new(Self::NAME, e))
    }
}

/// MessagePack via `rmp-serde` (structs as maps, so fields may be added or reordered).
#[derive(Clone, Copy, Debug, Default)]
pub struct MsgPack;

impl Codec for MsgPack {
    const NAME: &'static str = "msgpack";
    const CONTENT_TYPE: &'static str = "application/msgpack";
}

impl<T: Serialize + ?Sized> Encoder<T> for MsgPack {
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        with_scratch(|buffer| {
            value.serialize(&mut rmp_serde::Serializer::new(buffer).with_struct_map())
        })
        .map_err(|e| CodecError::new(Self::NAME, e))
    }
}

impl<T: DeserializeOwned> Decoder<T> for MsgPack {
    fn decode(payload: &Bytes) -> Result<T, CodecError> {
        rmp_serde::from_slice(payload).map_err(|e| CodecError::new(Self::NAME, e))
    }
}

/// Protocol Buffers via `prost`: payloads implementing `prost::Message + Default`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Protobuf;

impl Codec for Protobuf {
    const NAME: &'static str = "protobuf";
    const CONTENT_TYPE: &'static str = "application/x-protobuf";
}

impl<T: prost::Message> Encoder<T> for Protobuf {
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        Ok(Bytes::from(value.encode_to_vec()))
    }
}

impl<T: prost::Message + Default> Decoder<T> for Protobuf {
    fn decode(payload: &Bytes) -> Result<T, CodecError> {
        T::decode(payload.clone()).map_err(|e| CodecError::new(Self::NAME, e))
    }
}

/// UTF-8 text: the payload is a `String`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Text;

impl Codec for Text {
    const NAME: &'static str = "text";
    const CONTENT_TYPE: &'static str = "text/plain; charset=utf-8";
}

impl Encoder<String> for Text {
    fn encode(value: &String) -> Result<Bytes, CodecError> {
        Ok(payload_of(value.as_bytes()))
    }
}

impl Encoder<str> for Text {
    fn encode(value: &str) -> Result<Bytes, CodecError> {
        Ok(payload_of(value.as_bytes()))
    }
}

impl Decoder<String> for Text {
    fn decode(payload: &Bytes) -> Result<String, CodecError> {
        String::from_utf8(payload.to_vec()).map_err(|e| CodecError::new(Self::NAME, e))
    }
}

/// Raw bytes, untouched: the payload is `bytes::Bytes` or `Vec<u8>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawBytes;

impl Codec for RawBytes {
    const NAME: &'static str = "bytes";
    const CONTENT_TYPE: &'static str = "application/octet-stream";
}

impl Encoder<Bytes> for RawBytes {
    fn encode(value: &Bytes) -> Result<Bytes, CodecError> {
        Ok(value.clone())
    }
}

impl Encoder<Vec<u8>> for RawBytes {
    fn encode(value: &Vec<u8>) -> Result<Bytes, CodecError> {
        Ok(payload_of(value))
    }
}

impl Encoder<[u8]> for RawBytes {
    fn encode(value: &[u8]) -> Result<Bytes, CodecError> {
        Ok(payload_of(value))
    }
}

impl Decoder<Bytes> for RawBytes {
    fn decode(payload: &Bytes) -> Result<Bytes, CodecError> {
        Ok(payload.clone())
    }
}

impl Decoder<Vec<u8>> for RawBytes {
    fn decode(payload: &Bytes) -> Result<Vec<u8>, CodecError> {
        Ok(payload.to_vec())
    }
}

/// The names of the built-in codecs, as written in `#[subscriber(codec = "...")]`.
pub const BUILTIN_NAMES: [&str; 5] = ["json", "msgpack", "protobuf", "text", "bytes"];

/// Codecs a configuration may name for values that implement `serde::Serialize`
/// (the publisher's default codec).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SerdeCodec {
    /// [`Json`].
    #[default]
    Json,
    /// [`MsgPack`].
    MsgPack,
}

impl SerdeCodec {
    /// The names accepted by [`SerdeCodec::from_name`].
    pub const NAMES: [&'static str; 2] = ["json", "msgpack"];

    /// Looks a codec up by its name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(SerdeCodec::Json),
            "msgpack" => Some(SerdeCodec::MsgPack),
            _ => None,
        }
    }

    /// Encodes with this codec; returns the bytes and the content type.
    pub fn encode<T: Serialize + ?Sized>(
        self,
        value: &T,
    ) -> Result<(Bytes, &'static str), CodecError> {
        match self {
            SerdeCodec::Json => Json::encode(value).map(|b| (b, Json::CONTENT_TYPE)),
            SerdeCodec::MsgPack => MsgPack::encode(value).map(|b| (b, MsgPack::CONTENT_TYPE)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Reading {
        humidity: f64,
        label: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Proto {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(uint32, tag = "2")]
        count: u32,
    }

    fn reading() -> Reading {
        Reading {
            humidity: 41.5,
            label: "kitchen".into(),
        }
    }

    #[test]
    fn json_round_trips() {
        let bytes = Json::encode(&reading()).unwrap();
        assert_eq!(&bytes[..], br#"{"humidity":41.5,"label":"kitchen"}"#);
        assert_eq!(Json::decode(&bytes).map(|r: Reading| r).unwrap(), reading());
    }

    #[test]
    fn msgpack_round_trips() {
        let bytes = MsgPack::encode(&reading()).unwrap();
        assert_eq!(
            MsgPack::decode(&bytes).map(|r: Reading| r).unwrap(),
            reading()
        );
    }

    #[test]
    fn protobuf_round_trips() {
        let value = Proto {
            name: "n".into(),
            count: 7,
        };
        let bytes = Protobuf::encode(&value).unwrap();
        assert_eq!(Protobuf::decode(&bytes).map(|p: Proto| p).unwrap(), value);
    }

    #[test]
    fn text_and_bytes_round_trip() {
        let bytes = Text::encode(&"héllo".to_string()).unwrap();
        assert_eq!(<Text as Decoder<String>>::decode(&bytes).unwrap(), "héllo");
        let raw = Bytes::from_static(&[0, 159, 255]);
        assert_eq!(<RawBytes as Decoder<Bytes>>::decode(&raw).unwrap(), raw);
    }

    #[test]
    fn json_that_is_not_utf8_decodes_as_from_slice_would() {
        #[derive(Debug, Deserialize)]
        struct Only {
            humidity: f64,
        }
        // invalid bytes in a field the type skips: accepted, as serde_json accepts them
        let skipped = Bytes::from_static(b"{\"humidity\":1.5,\"note\":\"\xff\"}");
        let only: Only = Json::decode(&skipped).unwrap();
        assert_eq!(only.humidity, 1.5);
        // in a field it reads: refused, with the place
        let read = Bytes::from_static(b"{\"humidity\":41.5,\"label\":\"\xff\"}");
        let err = <Json as Decoder<Reading>>::decode(&read).unwrap_err();
        assert_eq!(err.codec, "json");
        assert!(err.to_string().contains("column"), "{err}");
        // and valid text decodes the same either way
        let text = Bytes::from_static("{\"humidity\":2.0,\"label\":\"h\u{e9}\\u00e9\"}".as_bytes());
        let reading: Reading = Json::decode(&text).unwrap();
        assert_eq!(reading.label, "h\u{e9}\u{e9}");
    }

    #[test]
    fn bad_input_is_a_codec_error() {
        let err =
            <Json as Decoder<Reading>>::decode(&Bytes::from_static(b"{not json")).unwrap_err();
        assert_eq!(err.codec, "json");
        let err =
            <Text as Decoder<String>>::decode(&Bytes::from_static(&[0xff, 0xfe])).unwrap_err();
        assert_eq!(err.codec, "text");
    }

    #[test]
    fn small_payloads_are_cut_from_shared_aligned_blocks_and_never_overwritten() {
        // run on a thread of its own: its block is this test's alone
        std::thread::spawn(|| {
            let text = |i: usize| format!("{{\"reading\":{i}}}").into_bytes();
            let first = payload_of(&text(0));
            let second = payload_of(&text(1));
            assert_eq!((&first[..], &second[..]), (&text(0)[..], &text(1)[..]));
            // one block, each payload on a 16-byte boundary right after the one before
            for payload in [&first, &second] {
                assert_eq!(payload.as_ptr() as usize % 16, 0);
            }
            assert_eq!(second.as_ptr() as usize - first.as_ptr() as usize, 16);
            // enough for several blocks while the first payloads are held: they keep
            // their bytes (a new block is taken, the held one is not written over)
            let many: Vec<Bytes> = (2..2000).map(|i| payload_of(&text(i))).collect();
            assert_eq!((&first[..], &second[..]), (&text(0)[..], &text(1)[..]));
            for (i, payload) in (2..).zip(&many) {
                assert_eq!(&payload[..], &text(i)[..]);
            }
            // a large payload is allocated alone
            let large = payload_of(&[7; SMALL_PAYLOAD + 1]);
            assert_eq!(&large[..], &[7; SMALL_PAYLOAD + 1][..]);
        })
        .join()
        .unwrap();
    }
}
