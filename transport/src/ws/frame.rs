//! What a WebSocket frame holds: a message type and its codec's bytes, in one of three
//! framings chosen per server (the same for a send and a broadcast). No I/O here.

use axum::extract::ws::Message as Outgoing;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// How a server writes (and reads) its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// A binary frame: the type as a little-endian `u32`, then the codec's bytes
    /// (kratos-transport's binary framing).
    #[default]
    Binary,
    /// A text frame: `{"type":N,"payload":<the JSON>}`. Every message type of the server
    /// must use the `json` codec.
    Text,
    /// A text frame whose payload is the JSON as a string, `{"type":N,"payload":"{..}"}`:
    /// kratos-transport's JSON framing, for its clients.
    TextStringPayload,
}

/// What a frame's bytes say, or why they say nothing usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A binary frame shorter than its four-byte type.
    #[error("a binary frame of {0} bytes is shorter than its 4-byte message type")]
    Short(usize),
    /// A text frame that is not `{"type":N,"payload":...}`.
    #[error("a text frame is not {{\"type\":N,\"payload\":...}}: {0}")]
    Envelope(String),
    /// A payload the text framing cannot carry (not JSON).
    #[error("the text framing carries JSON payloads only (this one is not UTF-8 JSON)")]
    NotJson,
}

/// The frame for message type `kind` carrying `payload` (already encoded by its codec).
pub(crate) fn encode(framing: Framing, kind: u32, payload: &[u8]) -> Result<Outgoing, FrameError> {
    match framing {
        Framing::Binary => {
            let mut frame = BytesMut::with_capacity(4 + payload.len());
            frame.put_u32_le(kind);
            frame.put_slice(payload);
            Ok(Outgoing::Binary(frame.freeze()))
        }
        Framing::Text => {
            let json = std::str::from_utf8(payload).map_err(|_| FrameError::NotJson)?;
            // the payload is the codec's JSON as it is: checked, not parsed again
            if serde_json::from_str::<&serde_json::value::RawValue>(json).is_err() {
                return Err(FrameError::NotJson);
            }
            Ok(Outgoing::text(format!(
                "{{\"type\":{kind},\"payload\":{json}}}"
            )))
        }
        Framing::TextStringPayload => {
            let json = std::str::from_utf8(payload).map_err(|_| FrameError::NotJson)?;
            let quoted = serde_json::to_string(json).map_err(|_| FrameError::NotJson)?;
            Ok(Outgoing::text(format!(
                "{{\"type\":{kind},\"payload\":{quoted}}}"
            )))
        }
    }
}

/// The message type and payload of a binary frame.
pub(crate) fn decode_binary(frame: &Bytes) -> Result<(u32, Bytes), FrameError> {
    let Some((kind, _)) = frame.split_first_chunk::<4>() else {
        return Err(FrameError::Short(frame.len()));
    };
    Ok((u32::from_le_bytes(*kind), frame.slice(4..)))
}

/// The message type and payload of a text frame. A string payload is unwrapped where the
/// server speaks kratos-transport's string framing; otherwise the payload is the JSON as
/// it stands.
pub(crate) fn decode_text(framing: Framing, frame: &str) -> Result<(u32, Bytes), FrameError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: u32,
        #[serde(borrow)]
        payload: Option<&'a serde_json::value::RawValue>,
    }
    // an object only (serde would also take a struct from an array)
    if !frame.trim_start().starts_with('{') {
        return Err(FrameError::Envelope("not a JSON object".to_string()));
    }
    let envelope: Envelope<'_> =
        serde_json::from_str(frame).map_err(|e| FrameError::Envelope(e.to_string()))?;
    let raw = envelope
        .payload
        .map_or("null", serde_json::value::RawValue::get);
    if framing == Framing::TextStringPayload && raw.starts_with('"') {
        let inner: String =
            serde_json::from_str(raw).map_err(|e| FrameError::Envelope(e.to_string()))?;
        return Ok((envelope.kind, Bytes::from(inner)));
    }
    Ok((envelope.kind, Bytes::copy_from_slice(raw.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_frames_are_the_type_then_the_bytes() {
        let frame = encode(Framing::Binary, 7, b"{\"a\":1}").unwrap();
        let Outgoing::Binary(bytes) = frame else {
            panic!("binary framing wrote text");
        };
        assert_eq!(&bytes[..4], &[7, 0, 0, 0]);
        assert_eq!(
            decode_binary(&bytes).unwrap(),
            (7, Bytes::from_static(b"{\"a\":1}"))
        );
        assert_eq!(
            decode_binary(&Bytes::from_static(&[1, 0])),
            Err(FrameError::Short(2))
        );
        // a type with no payload is a frame
        assert_eq!(
            decode_binary(&Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).unwrap(),
            (u32::MAX, Bytes::new())
        );
    }

    #[test]
    fn text_frames_embed_the_json_or_a_string_of_it() {
        let frame = encode(Framing::Text, 3, br#"{"text":"<b>hi</b>"}"#).unwrap();
        assert_eq!(
            frame,
            Outgoing::text(r#"{"type":3,"payload":{"text":"<b>hi</b>"}}"#)
        );
        let Outgoing::Text(text) = frame else {
            unreachable!()
        };
        let text = text.as_str();
        assert_eq!(
            decode_text(Framing::Text, text).unwrap(),
            (3, Bytes::from_static(br#"{"text":"<b>hi</b>"}"#))
        );

        let compat = encode(Framing::TextStringPayload, 3, br#"{"n":1}"#).unwrap();
        assert_eq!(
            compat,
            Outgoing::text(r#"{"type":3,"payload":"{\"n\":1}"}"#)
        );
        let Outgoing::Text(text) = compat else {
            unreachable!()
        };
        let text = text.as_str();
        assert_eq!(
            decode_text(Framing::TextStringPayload, text).unwrap(),
            (3, Bytes::from_static(br#"{"n":1}"#))
        );
        // a compat server still reads a plain JSON payload
        assert_eq!(
            decode_text(
                Framing::TextStringPayload,
                r#"{"type":3,"payload":{"n":1}}"#
            )
            .unwrap(),
            (3, Bytes::from_static(br#"{"n":1}"#))
        );
        // a missing payload is JSON null
        assert_eq!(
            decode_text(Framing::Text, r#"{"type":9}"#).unwrap(),
            (9, Bytes::from_static(b"null"))
        );
    }

    #[test]
    fn what_is_not_a_frame_says_why() {
        for bad in [
            "",
            "hello",
            "{}",
            r#"{"type":-1,"payload":1}"#,
            r#"{"type":"1"}"#,
            "[1,2]",
        ] {
            assert!(
                matches!(
                    decode_text(Framing::Text, bad),
                    Err(FrameError::Envelope(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            encode(Framing::Text, 1, &[0x92, 0x01]),
            Err(FrameError::NotJson)
        );
        assert_eq!(
            encode(Framing::Text, 1, b"{not json"),
            Err(FrameError::NotJson)
        );
    }
}
