//! Dead letters: the message a subscriber gave up on, republished as a new message on its
//! dead-letter topic, and the App's record of the last ones.
//!
//! A dead letter is a new message: it gets an id of its own (the original's is kept in
//! [`headers::ORIGINAL_ID`]) and none of the headers the broker itself acts on
//! ([`Backend::owns_header`](crate::backend::Backend::owns_header)), so a broker that
//! deduplicates by id never drops it as a copy of the original. It must always be
//! publishable: the publisher's `max_message_bytes` does not apply (the broker already
//! accepted the original), and where the broker has a size limit the dead letter is
//! fitted under it, its payload truncated as a last resort ([`headers::TRUNCATED_FROM`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::Message;

/// Header names set on dead-lettered messages.
pub mod headers {
    /// The error's message.
    pub const ERROR: &str = "x-transport-error";
    /// `handler`, `panic`, `timeout`, `decode`, `too-large` or `malformed`.
    pub const ERROR_KIND: &str = "x-transport-error-kind";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "x-transport-attempts";
    /// The topic the message was consumed from.
    pub const ORIGINAL_TOPIC: &str = "x-transport-original-topic";
    /// The consumed message's id, when it had one.
    pub const ORIGINAL_ID: &str = "x-transport-original-id";
    /// The subscriber that gave up on it.
    pub const SUBSCRIBER: &str = "x-transport-subscriber";
    /// The subscriber's group, when it has one.
    pub const GROUP: &str = "x-transport-group";
    /// Unix time in milliseconds when it was dead-lettered.
    pub const FAILED_AT: &str = "x-transport-failed-at";
    /// The original payload's size in bytes, when the dead letter carries only its
    /// beginning (it would not fit under the broker's limit otherwise).
    pub const TRUNCATED_FROM: &str = "x-transport-truncated-from";
    /// How many of the original's headers were left out to fit the broker's limit.
    pub const HEADERS_DROPPED: &str = "x-transport-headers-dropped";
}

/// Most characters of an error kept in the [`headers::ERROR`] header.
pub const MAX_ERROR_HEADER_CHARS: usize = 1024;

/// How many dead letters [`DeadLetters`] keeps (the oldest go first).
pub const KEPT: usize = 128;

/// Bytes reserved for a broker's own framing of headers (`NATS/1.0`, separators).
const HEADER_FRAMING: usize = 64;

/// Why a message was dead-lettered, and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct Reason<'a> {
    pub kind: &'static str,
    pub error: &'a str,
    pub attempts: u32,
    pub topic: &'a str,
    pub subscriber: &'static str,
    pub group: Option<&'a str>,
}

/// Builds the dead letter of `original`: a new id, the broker's own headers left out,
/// the error headers added, fitted under `max_size` (payload plus headers) if given.
pub(crate) fn letter(
    original: &Message,
    reason: &Reason<'_>,
    owns_header: impl Fn(&str) -> bool,
    max_size: Option<usize>,
) -> Message {
    let mut message = Message {
        payload: original.payload.clone(),
        headers: original
            .headers
            .iter()
            .filter(|(name, _)| !owns_header(name))
            .collect(),
        key: original.key.clone(),
        id: Some(new_id()),
        reply_to: None,
    };
    let failed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let h = &mut message.headers;
    h.insert(headers::ERROR, header_text(reason.error));
    h.insert(headers::ERROR_KIND, reason.kind);
    h.insert(headers::ATTEMPTS, reason.attempts.to_string());
    h.insert(headers::ORIGINAL_TOPIC, reason.topic);
    if let Some(id) = &original.id {
        h.insert(headers::ORIGINAL_ID, header_text(id));
    }
    h.insert(headers::SUBSCRIBER, reason.subscriber);
    if let Some(group) = reason.group {
        h.insert(headers::GROUP, group);
    }
    h.insert(headers::FAILED_AT, failed_at.to_string());
    if let Some(correlation) = crate::publisher::correlation_of(original) {
        let correlation = header_text(correlation);
        h.insert(crate::publisher::CORRELATION_ID, correlation);
    }
    if let Some(limit) = max_size {
        fit(&mut message, limit);
    }
    message
}

fn header_bytes(message: &Message) -> usize {
    HEADER_FRAMING
        + message
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
        + message.key.as_ref().map_or(0, String::len)
        + message.id.as_ref().map_or(0, |id| id.len())
}

/// Fits an already built letter under a lower `limit` a broker reported; `false` when it
/// already fits (nothing to do: the failure was something else).
pub(crate) fn refit(message: &mut Message, limit: usize) -> bool {
    if message.payload.len() + header_bytes(message) <= limit {
        return false;
    }
    fit(message, limit);
    true
}

/// Makes `message` fit in `limit` bytes: first the original's own headers go (the
/// framework's stay), then the payload is cut.
fn fit(message: &mut Message, limit: usize) {
    if message.payload.len() + header_bytes(message) <= limit {
        return;
    }
    if header_bytes(message) > limit / 2 {
        let before = message.headers.len();
        message.headers = message
            .headers
            .iter()
            .filter(|(name, _)| name.starts_with("x-transport-"))
            .collect();
        let dropped = before - message.headers.len();
        message
            .headers
            .insert(headers::HEADERS_DROPPED, dropped.to_string());
    }
    let size = message.payload.len();
    // room for the truncation header itself
    let room = limit.saturating_sub(header_bytes(message) + headers::TRUNCATED_FROM.len() + 24);
    if size > room {
        message.payload.truncate(room);
        message
            .headers
            .insert(headers::TRUNCATED_FROM, size.to_string());
    }
}

/// A dead letter's own id.
fn new_id() -> crate::message::MessageId {
    format!("dlq-{}", crate::message::message_id()).into()
}

/// An error message as a header value: one line (CR/LF and other control characters
/// become spaces; several brokers' headers cannot carry them) of bounded length.
pub(crate) fn header_text(error: &str) -> String {
    let mut text: String = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_HEADER_CHARS)
        .collect();
    if error.chars().count() > MAX_ERROR_HEADER_CHARS {
        text.push('…');
    }
    text
}

/// One dead letter as the App recorded it.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The dead-letter topic it was published to.
    pub topic: String,
    /// The message as published there (payload, error headers, new id).
    pub message: Message,
}

/// The App's record of dead letters: the last [`KEPT`] published, and how many
/// dead-letter publishes failed (each is retried; the handler never runs again). Read it
/// with [`Running::dead_letters`](crate::Running::dead_letters); on a broker where nobody
/// consumes the dead-letter topic (the in-process one), this is where they stay visible.
#[derive(Clone, Default)]
pub struct DeadLetters {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    recent: Mutex<VecDeque<DeadLetter>>,
    published: AtomicU64,
    failed: AtomicU64,
}

impl DeadLetters {
    pub(crate) fn published(&self, topic: &str, message: Message) {
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        let mut recent = self
            .inner
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(DeadLetter {
            topic: topic.to_string(),
            message,
        });
    }

    pub(crate) fn failed(&self) {
        self.inner.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The last dead letters published, oldest first.
    pub fn recent(&self) -> Vec<DeadLetter> {
        self.inner
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Dead letters published since the App started.
    pub fn published_count(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }

    /// Dead-letter publishes that failed (and were retried) since the App started.
    pub fn failed_count(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("published", &self.published_count())
            .field("failed", &self.failed_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason() -> Reason<'static> {
        Reason {
            kind: "handler",
            error: "boom",
            attempts: 3,
            topic: "orders",
            subscriber: "S::m",
            group: Some("g"),
        }
    }

    #[test]
    fn error_headers_are_one_bounded_line() {
        assert_eq!(
            header_text("db down:\r\n  retry later\tsoon"),
            "db down:    retry later soon"
        );
        let long = "x".repeat(5000);
        let text = header_text(&long);
        assert_eq!(text.chars().count(), MAX_ERROR_HEADER_CHARS + 1);
        assert!(text.ends_with('…'));
    }

    #[test]
    fn a_dead_letter_is_a_new_message_without_broker_headers() {
        let original = Message::new(&b"{}"[..])
            .with_header("Nats-Msg-Id", "m-1")
            .with_header("trace-id", "t");
        let original = Message {
            id: Some("m-1".into()),
            reply_to: Some("_INBOX.x".into()),
            ..original
        };
        let letter = letter(&original, &reason(), |name| name.starts_with("Nats-"), None);
        assert_ne!(letter.id, original.id);
        assert!(
            letter
                .id
                .as_deref()
                .is_some_and(|id| id.starts_with("dlq-"))
        );
        assert_eq!(letter.headers.get("Nats-Msg-Id"), None);
        assert_eq!(letter.headers.get("trace-id"), Some("t"));
        assert_eq!(letter.headers.get(headers::ORIGINAL_ID), Some("m-1"));
        assert_eq!(letter.reply_to, None);
        let other = super::letter(&original, &reason(), |_| false, None);
        assert_ne!(other.id, letter.id, "ids are unique");
    }

    #[test]
    fn a_dead_letter_fits_under_the_broker_limit() {
        let original = Message::new(vec![7u8; 10_000]).with_header("big", "v".repeat(3_000));
        let letter = letter(&original, &reason(), |_| false, Some(4_096));
        assert!(letter.payload.len() + header_bytes(&letter) <= 4_096);
        assert_eq!(letter.headers.get(headers::TRUNCATED_FROM), Some("10000"));
        assert_eq!(letter.headers.get(headers::HEADERS_DROPPED), Some("1"));
        assert_eq!(letter.headers.get(headers::ERROR), Some("boom"));
        let small = super::letter(&Message::new(&b"1"[..]), &reason(), |_| false, Some(4_096));
        assert_eq!(small.headers.get(headers::TRUNCATED_FROM), None);
        assert_eq!(&small.payload[..], b"1");
    }

    #[test]
    fn the_record_is_bounded() {
        let letters = DeadLetters::default();
        for n in 0..(KEPT + 5) {
            letters.published("t.dlq", Message::new(n.to_string()));
        }
        let recent = letters.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(&recent[0].message.payload[..], b"5");
        assert_eq!(letters.published_count(), (KEPT + 5) as u64);
    }
}
