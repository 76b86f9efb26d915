//! NSQ's TCP protocol (`  V2`), from its public specification: the commands a client
//! writes and the frames nsqd answers with. Pure encoding and decoding: no I/O, so every
//! frame type, partial read and hostile size is tested here, without a server.
//!
//! - A command is a line (`SUB orders billing\n`), some followed by a body: a big-endian
//!   `u32` size, then the bytes (`PUB`, `DPUB`, `IDENTIFY`; `MPUB`'s body is a count and
//!   a size-prefixed body per message).
//! - A frame is a big-endian `u32` size (of what follows), a `u32` type (0 response,
//!   1 error, 2 message), then the data. A message's data is its timestamp (`i64`
//!   nanoseconds), its `attempts` (`u16`), its 16-byte id (hex text), then the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What a client writes first on a connection.
pub const MAGIC: &[u8; 4] = b"  V2";
/// nsqd's answer to a heartbeat is this response; the client answers with `NOP`.
pub const HEARTBEAT: &[u8] = b"_heartbeat_";
/// nsqd's answer to `CLS`: it sends no more messages.
pub const CLOSE_WAIT: &[u8] = b"CLOSE_WAIT";
/// The answer to a command that worked.
pub const OK: &[u8] = b"OK";
/// Length of a message id.
pub const ID_LEN: usize = 16;
/// Longest topic or channel name (`#ephemeral` included).
pub const MAX_NAME_LEN: usize = 64;
/// Frame data of a message before its body: timestamp, attempts, id.
const MESSAGE_HEADER_LEN: usize = 8 + 2 + ID_LEN;

/// A message id as nsqd sends it (16 bytes of hex text).
pub type MessageId = [u8; ID_LEN];

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A frame larger than the connection accepts (the negotiated `max_msg_size` plus
    /// the frame's own header).
    #[error("nsq frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The size the frame declared.
        size: usize,
        /// The largest accepted.
        limit: usize,
    },
    /// A frame whose size cannot hold its type.
    #[error("nsq frame declares {0} bytes: too small to hold its type")]
    TooSmall(usize),
    /// A frame type the protocol does not have.
    #[error("nsq frame of unknown type {0}")]
    UnknownType(u32),
    /// A message frame too short for a message.
    #[error("nsq message frame of {0} bytes: shorter than a message's header")]
    ShortMessage(usize),
}

/// A command to nsqd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `IDENTIFY` with the client's settings as JSON.
    Identify(&'a [u8]),
    /// `SUB <topic> <channel>`.
    Sub {
        /// The topic.
        topic: &'a str,
        /// The channel.
        channel: &'a str,
    },
    /// `PUB <topic>` with one body.
    Pub {
        /// The topic.
        topic: &'a str,
        /// The message body.
        body: &'a [u8],
    },
    /// `MPUB <topic>` with several bodies.
    Mpub {
        /// The topic.
        topic: &'a str,
        /// The message bodies.
        bodies: &'a [Bytes],
    },
    /// `DPUB <topic> <defer ms>`: delivered after the delay.
    Dpub {
        /// The topic.
        topic: &'a str,
        /// Milliseconds before delivery.
        defer_ms: u64,
        /// The message body.
        body: &'a [u8],
    },
    /// `RDY <count>`: how many messages may be in flight to this client.
    Rdy(u64),
    /// `FIN <id>`: handled.
    Fin(&'a MessageId),
    /// `REQ <id> <timeout ms>`: deliver again after the delay.
    Req {
        /// The message.
        id: &'a MessageId,
        /// Milliseconds before it is delivered again.
        timeout_ms: u64,
    },
    /// `TOUCH <id>`: still working on it (resets its timeout).
    Touch(&'a MessageId),
    /// `CLS`: send no more messages.
    Cls,
    /// `NOP`: the answer to a heartbeat.
    Nop,
}

impl Command<'_> {
    /// Appends the command's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Command::Identify(json) => {
                out.put_slice(b"IDENTIFY\n");
                put_body(out, json);
            }
            Command::Sub { topic, channel } => {
                line(out, &[b"SUB", topic.as_bytes(), channel.as_bytes()]);
            }
            Command::Pub { topic, body } => {
                line(out, &[b"PUB", topic.as_bytes()]);
                put_body(out, body);
            }
            Command::Mpub { topic, bodies } => {
                line(out, &[b"MPUB", topic.as_bytes()]);
                let size: usize = 4 + bodies.iter().map(|b| 4 + b.len()).sum::<usize>();
                out.reserve(4 + size);
                out.put_u32(u32::try_from(size).unwrap_or(u32::MAX));
                out.put_u32(u32::try_from(bodies.len()).unwrap_or(u32::MAX));
                for body in *bodies {
                    put_body(out, body);
                }
            }
            Command::Dpub {
                topic,
                defer_ms,
                body,
            } => {
                line(
                    out,
                    &[b"DPUB", topic.as_bytes(), defer_ms.to_string().as_bytes()],
                );
                put_body(out, body);
            }
            Command::Rdy(count) => line(out, &[b"RDY", count.to_string().as_bytes()]),
            Command::Fin(id) => line(out, &[b"FIN", &id[..]]),
            Command::Req { id, timeout_ms } => {
                line(out, &[b"REQ", &id[..], timeout_ms.to_string().as_bytes()]);
            }
            Command::Touch(id) => line(out, &[b"TOUCH", &id[..]]),
            Command::Cls => out.put_slice(b"CLS\n"),
            Command::Nop => out.put_slice(b"NOP\n"),
        }
    }
}

fn line(out: &mut BytesMut, words: &[&[u8]]) {
    for (index, word) in words.iter().enumerate() {
        if index > 0 {
            out.put_u8(b' ');
        }
        out.put_slice(word);
    }
    out.put_u8(b'\n');
}

fn put_body(out: &mut BytesMut, body: &[u8]) {
    out.reserve(4 + body.len());
    out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(body);
}

/// A message as nsqd delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsqMessage {
    /// When it was published, in nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// How many times nsqd has delivered it (1 the first time).
    pub attempts: u16,
    /// Its id, for `FIN`, `REQ` and `TOUCH`.
    pub id: MessageId,
    /// Its body.
    pub body: Bytes,
}

/// A frame from nsqd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A response (`OK`, `_heartbeat_`, `CLOSE_WAIT`, IDENTIFY's JSON).
    Response(Bytes),
    /// An error (`E_INVALID ...`, `E_FIN_FAILED ...`).
    Error(Bytes),
    /// A message.
    Message(NsqMessage),
}

/// Reads frames from a connection's bytes, refusing any over `limit` bytes before
/// buffering it.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    /// The largest frame accepted (size field included).
    pub limit: usize,
}

impl FrameDecoder {
    /// The next whole frame in `buffer` (consumed from it), `None` when more bytes are
    /// needed, or an error for a frame that can never be read (the connection is then
    /// unusable: its framing is lost).
    pub fn decode(&self, buffer: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if buffer.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
        if size < 4 {
            return Err(ProtocolError::TooSmall(size));
        }
        if size.saturating_add(4) > self.limit {
            return Err(ProtocolError::TooLarge {
                size: size.saturating_add(4),
                limit: self.limit,
            });
        }
        if buffer.len() < 4 + size {
            buffer.reserve(4 + size - buffer.len());
            return Ok(None);
        }
        buffer.advance(4);
        let kind = buffer.get_u32();
        let mut data = buffer.split_to(size - 4).freeze();
        match kind {
            0 => Ok(Some(Frame::Response(data))),
            1 => Ok(Some(Frame::Error(data))),
            2 => {
                if data.len() < MESSAGE_HEADER_LEN {
                    return Err(ProtocolError::ShortMessage(data.len()));
                }
                let timestamp = data.get_i64();
                let attempts = data.get_u16();
                let mut id = [0u8; ID_LEN];
                data.copy_to_slice(&mut id);
                Ok(Some(Frame::Message(NsqMessage {
                    timestamp,
                    attempts,
                    id,
                    body: data,
                })))
            }
            other => Err(ProtocolError::UnknownType(other)),
        }
    }
}

/// What is wrong with `name` as an NSQ topic or channel name, if anything: 1 to 64 of
/// ASCII letters, digits, `.`, `_`, `-`, optionally ending in `#ephemeral`.
pub fn name_problem(name: &str) -> Option<String> {
    let base = name.strip_suffix("#ephemeral").unwrap_or(name);
    if name.is_empty() || base.is_empty() {
        return Some("is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "is {} bytes long (NSQ names hold at most {MAX_NAME_LEN})",
            name.len()
        ));
    }
    base.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| {
            format!("contains `{c}`: NSQ names hold only ASCII letters, digits, `.`, `_` and `-`")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &MessageId = b"0a1b2c3d4e5f6789";

    fn encoded(command: Command<'_>) -> Vec<u8> {
        let mut out = BytesMut::new();
        command.encode(&mut out);
        out.to_vec()
    }

    #[test]
    fn commands_are_written_as_the_specification_says() {
        assert_eq!(
            encoded(Command::Identify(b"{}")),
            b"IDENTIFY\n\x00\x00\x00\x02{}"
        );
        assert_eq!(
            encoded(Command::Sub {
                topic: "orders",
                channel: "billing"
            }),
            b"SUB orders billing\n"
        );
        assert_eq!(
            encoded(Command::Pub {
                topic: "orders",
                body: b"hi"
            }),
            b"PUB orders\n\x00\x00\x00\x02hi"
        );
        assert_eq!(
            encoded(Command::Mpub {
                topic: "t",
                bodies: &[Bytes::from_static(b"a"), Bytes::from_static(b"bc")]
            }),
            b"MPUB t\n\x00\x00\x00\x0f\x00\x00\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x02bc"
        );
        assert_eq!(
            encoded(Command::Dpub {
                topic: "t",
                defer_ms: 1500,
                body: b"x"
            }),
            b"DPUB t 1500\n\x00\x00\x00\x01x"
        );
        assert_eq!(encoded(Command::Rdy(32)), b"RDY 32\n");
        assert_eq!(encoded(Command::Fin(ID)), b"FIN 0a1b2c3d4e5f6789\n");
        assert_eq!(
            encoded(Command::Req {
                id: ID,
                timeout_ms: 250
            }),
            b"REQ 0a1b2c3d4e5f6789 250\n"
        );
        assert_eq!(encoded(Command::Touch(ID)), b"TOUCH 0a1b2c3d4e5f6789\n");
        assert_eq!(encoded(Command::Cls), b"CLS\n");
        assert_eq!(encoded(Command::Nop), b"NOP\n");
    }

    fn frame(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(u32::try_from(data.len()).unwrap() + 4).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn message_data(attempts: u16, body: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&1_700_000_000_000_000_000i64.to_be_bytes());
        data.extend_from_slice(&attempts.to_be_bytes());
        data.extend_from_slice(ID);
        data.extend_from_slice(body);
        data
    }

    const DECODER: FrameDecoder = FrameDecoder { limit: 1024 };

    #[test]
    fn every_frame_type_is_read() {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&frame(0, HEARTBEAT));
        buffer.extend_from_slice(&frame(1, b"E_INVALID bad"));
        buffer.extend_from_slice(&frame(2, &message_data(3, b"{\"id\":7}")));
        assert_eq!(
            DECODER.decode(&mut buffer),
            Ok(Some(Frame::Response(Bytes::from_static(HEARTBEAT))))
        );
        assert_eq!(
            DECODER.decode(&mut buffer),
            Ok(Some(Frame::Error(Bytes::from_static(b"E_INVALID bad"))))
        );
        assert_eq!(
            DECODER.decode(&mut buffer),
            Ok(Some(Frame::Message(NsqMessage {
                timestamp: 1_700_000_000_000_000_000,
                attempts: 3,
                id: *ID,
                body: Bytes::from_static(b"{\"id\":7}"),
            })))
        );
        assert_eq!(DECODER.decode(&mut buffer), Ok(None));
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_frame_read_a_byte_at_a_time_comes_out_whole_once() {
        let bytes = frame(2, &message_data(1, b"payload"));
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for byte in bytes {
            buffer.put_u8(byte);
            if let Some(frame) = DECODER.decode(&mut buffer).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 1);
        assert!(matches!(&frames[0], Frame::Message(m) if m.body == "payload"));
    }

    #[test]
    fn hostile_frames_are_refused_before_they_are_buffered() {
        // a size near 4 GiB is refused from its first four bytes
        let mut buffer = BytesMut::from(&[0xff, 0xff, 0xff, 0xf0][..]);
        assert_eq!(
            DECODER.decode(&mut buffer),
            Err(ProtocolError::TooLarge {
                size: 0xffff_fff0 + 4,
                limit: 1024
            })
        );
        let mut buffer = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert_eq!(DECODER.decode(&mut buffer), Err(ProtocolError::TooSmall(2)));
        let mut buffer = BytesMut::from(&frame(7, b"??")[..]);
        assert_eq!(
            DECODER.decode(&mut buffer),
            Err(ProtocolError::UnknownType(7))
        );
        let mut buffer = BytesMut::from(&frame(2, b"short")[..]);
        assert_eq!(
            DECODER.decode(&mut buffer),
            Err(ProtocolError::ShortMessage(5))
        );
        // garbage that happens to frame well is read as what it says
        let mut buffer = BytesMut::from(&frame(0, b"\x00\xff garbage")[..]);
        assert!(matches!(
            DECODER.decode(&mut buffer),
            Ok(Some(Frame::Response(_)))
        ));
    }

    #[test]
    fn names_follow_nsq_rules() {
        for good in ["orders", "a.b-c_d", "billing#ephemeral", &"x".repeat(64)] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("#ephemeral", "empty"),
            ("a b", "contains ` `"),
            ("a:b", "contains `:`"),
            ("a#b", "contains `#`"),
        ] {
            let problem = name_problem(bad).unwrap_or_default();
            assert!(problem.contains(says), "{bad}: {problem}");
        }
        assert!(
            name_problem(&"x".repeat(65))
                .unwrap()
                .contains("at most 64")
        );
    }
}
