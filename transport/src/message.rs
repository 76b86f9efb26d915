//! Messages as they travel: a payload of bytes, headers, an optional key and id.

use std::borrow::Cow;

use bytes::Bytes;

/// Header name carrying the payload's content type (`application/json`, ...).
pub const CONTENT_TYPE: &str = "content-type";

/// Ordered message headers. Names are compared case-sensitively; a name may appear once
/// (`insert` replaces). Small on purpose: most messages carry a handful of headers.
///
/// ```
/// let mut headers = transport::Headers::new();
/// headers.insert("trace-id", "abc");
/// assert_eq!(headers.get("trace-id"), Some("abc"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Headers {
    /// A header the framework sets from constants (the codec's `content-type`), held
    /// without an allocation; it comes first in iteration.
    fixed: Option<(&'static str, &'static str)>,
    /// Every other header, in insertion order.
    entries: Vec<(Cow<'static, str>, Cow<'static, str>)>,
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers {
            fixed: None,
            entries: Vec::new(),
        }
    }

    /// Only the `content-type` of a codec (what a publish starts from), made without a
    /// search or an allocation.
    pub(crate) const fn with_content_type(content_type: &'static str) -> Self {
        Headers {
            fixed: Some((CONTENT_TYPE, content_type)),
            entries: Vec::new(),
        }
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        match self.fixed {
            Some((fixed, value)) if fixed == name => Some(value),
            _ => self
                .entries
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_ref()),
        }
    }

    /// As [`iter`](Headers::iter), with each name's `&'static` form where it has one (a
    /// constant the framework set), which a backend can use without copying it.
    #[cfg(feature = "nats")]
    pub(crate) fn iter_with_static(
        &self,
    ) -> impl Iterator<Item = (Option<&'static str>, &str, &str)> {
        self.fixed
            .into_iter()
            .map(|(name, value)| (Some(name), name, value))
            .chain(self.entries.iter().map(|(name, value)| {
                let constant = match name {
                    Cow::Borrowed(name) => Some(*name),
                    Cow::Owned(_) => None,
                };
                (constant, name.as_ref(), value.as_ref())
            }))
    }

    /// Sets `name` to `value`, replacing a previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        if self.fixed.is_some_and(|(fixed, _)| fixed == name) {
            self.fixed = None;
        }
        let value = Cow::Owned(value.into());
        match self.entries.iter_mut().find(|(n, _)| *n == *name) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((Cow::Owned(name), value)),
        }
    }

    /// Sets a header whose name lives for the whole program (not copied) to `value`.
    pub(crate) fn insert_named(&mut self, name: &'static str, value: String) {
        if self.fixed.is_some_and(|(fixed, _)| fixed == name) {
            self.fixed = None;
        }
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = Cow::Owned(value),
            None => self.entries.push((Cow::Borrowed(name), Cow::Owned(value))),
        }
    }

    /// Sets a header whose name and value live for the whole program, copying nothing
    /// (and allocating nothing when it is the only such header).
    pub(crate) fn insert_static(&mut self, name: &'static str, value: &'static str) {
        if let Some(entry) = self.entries.iter_mut().find(|(n, _)| n == name) {
            entry.1 = Cow::Borrowed(value);
            return;
        }
        match self.fixed {
            Some((fixed, _)) if fixed != name => {
                self.entries
                    .push((Cow::Borrowed(name), Cow::Borrowed(value)));
            }
            _ => self.fixed = Some((name, value)),
        }
    }

    /// Sets a header a broker delivered (`name`, `value` as read from the wire). The
    /// `content-type` of a built-in codec, the header nearly every message carries, is
    /// held as the codec's own constant, copying nothing; anything else is copied as
    /// [`Headers::insert`] does.
    #[cfg_attr(
        not(any(
            feature = "nats",
            feature = "mqtt",
            feature = "rabbitmq",
            feature = "kafka"
        )),
        allow(dead_code)
    )]
    pub(crate) fn insert_received(&mut self, name: &str, value: &str) {
        use crate::codec::{Codec, Json, MsgPack, Protobuf, RawBytes, Text};
        // `value` as the same content type of a built-in codec
        let known = (name == CONTENT_TYPE)
            .then(|| {
                [
                    Json::CONTENT_TYPE,
                    MsgPack::CONTENT_TYPE,
                    Protobuf::CONTENT_TYPE,
                    Text::CONTENT_TYPE,
                    RawBytes::CONTENT_TYPE,
                ]
                .into_iter()
                .find(|known| *known == value)
            })
            .flatten();
        match known {
            Some(known) => self.insert_static(CONTENT_TYPE, known),
            None => self.insert(name, value),
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        if let Some((fixed, value)) = self.fixed
            && fixed == name
        {
            self.fixed = None;
            return Some(value.to_string());
        }
        let index = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(index).1.into_owned())
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every header: the framework's content type first, then the others in insertion
    /// order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fixed
            .into_iter()
            .chain(self.entries.iter().map(|(n, v)| (n.as_ref(), v.as_ref())))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries.len() + usize::from(self.fixed.is_some())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Equal when the same names carry the same values in the same order.
impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (k, v) in iter {
            headers.insert(k, v);
        }
        headers
    }
}

/// What every id [`message_id`] makes begins with.
pub const GENERATED_ID_PREFIX: &str = "tp-";

/// A message id. Ids of up to 46 bytes (every id [`message_id`] makes, and most
/// brokers' and producers' ids) are held inline, without an allocation; it reads as a
/// `&str` (`Deref`), compares with strings, and converts from `String` and `&str`.
///
/// ```
/// let id = transport::MessageId::from("order-7");
/// assert_eq!(id, "order-7");
/// assert_eq!(id.len(), 7);
/// assert_eq!(id.to_string(), "order-7");
/// ```
#[derive(Clone)]
pub struct MessageId(IdRepr);

#[derive(Clone)]
enum IdRepr {
    /// Read as `&str` for free (this is read on every publish and delivery).
    Inline(arrayvec::ArrayString<INLINE_ID>),
    Heap(Box<str>),
}

/// The longest id held inline (a generated id is at most 45 bytes).
const INLINE_ID: usize = 46;

impl MessageId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            IdRepr::Inline(text) => text,
            IdRepr::Heap(text) => text,
        }
    }
}

impl std::ops::Deref for MessageId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for MessageId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for MessageId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for MessageId {
    fn from(id: &str) -> Self {
        match arrayvec::ArrayString::from(id) {
            Ok(text) => MessageId(IdRepr::Inline(text)),
            Err(_) => MessageId(IdRepr::Heap(id.into())),
        }
    }
}

impl From<&String> for MessageId {
    fn from(id: &String) -> Self {
        MessageId::from(id.as_str())
    }
}

impl From<String> for MessageId {
    fn from(id: String) -> Self {
        match arrayvec::ArrayString::from(&id) {
            Ok(text) => MessageId(IdRepr::Inline(text)),
            Err(_) => MessageId(IdRepr::Heap(id.into_boxed_str())),
        }
    }
}

impl From<&MessageId> for MessageId {
    fn from(id: &MessageId) -> Self {
        id.clone()
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> Self {
        id.as_str().to_string()
    }
}

impl PartialEq for MessageId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MessageId {}

impl PartialEq<str> for MessageId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MessageId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for MessageId {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl std::hash::Hash for MessageId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for MessageId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MessageId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new message id: [`GENERATED_ID_PREFIX`], a part made once per process (start time
/// and pid, so ids of different processes differ) and a counter in hex (each thread takes
/// its values a block at a time: ids are unique, not ordered across threads). What the publisher
/// gives every message published without an id, so replies and dead letters can always
/// name their original. Held inline: making one allocates nothing.
///
/// ```
/// let (a, b) = (transport::message_id(), transport::message_id());
/// assert_ne!(a, b);
/// assert!(transport::is_generated_id(&a));
/// assert!(!transport::is_generated_id("order-7"));
/// ```
pub fn message_id() -> MessageId {
    thread_local! {
        static IDS: std::cell::RefCell<ThreadIds> = const {
            std::cell::RefCell::new(ThreadIds {
                last: arrayvec::ArrayString::new_const(),
                next: 0,
                end: 0,
            })
        };
    }
    IDS.try_with(|ids| ids.try_borrow_mut().ok().map(|mut ids| ids.next()))
        .ok()
        .flatten()
        .unwrap_or_else(|| MessageId(IdRepr::Inline(generated_id(next_ids(1)))))
}

/// The counter values every thread's ids are taken from, a block at a time.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many counter values a thread takes at once.
const ID_BLOCK: u64 = 1 << 12;

/// The first of `count` counter values no other id has.
fn next_ids(count: u64) -> u64 {
    NEXT_ID.fetch_add(count, std::sync::atomic::Ordering::Relaxed)
}

/// A thread's generated ids: the last one made, and the counter values of its block still
/// unused. The next id differs from the last in its last hex digit but one time in
/// sixteen, so it is made by changing that digit (this runs on every publish).
struct ThreadIds {
    last: arrayvec::ArrayString<INLINE_ID>,
    next: u64,
    end: u64,
}

impl ThreadIds {
    fn next(&mut self) -> MessageId {
        if self.next == self.end || self.next & 0xf == 0 {
            self.write_out();
        } else {
            self.last.pop();
            self.last
                .push(char::from(b"0123456789abcdef"[(self.next & 0xf) as usize]));
        }
        self.next += 1;
        MessageId(IdRepr::Inline(self.last))
    }

    /// A new block, or a carry: the id written out in full. Out of line (one call in
    /// sixteen): inlined, it made every id ~60 instructions dearer (counted).
    #[cold]
    #[inline(never)]
    fn write_out(&mut self) {
        if self.next == self.end {
            self.next = next_ids(ID_BLOCK);
            self.end = self.next.saturating_add(ID_BLOCK);
        }
        self.last = generated_id(self.next);
    }
}

/// The id of counter value `n`: the process's prefix, then `n` in hex.
fn generated_id(n: u64) -> arrayvec::ArrayString<INLINE_ID> {
    use std::sync::OnceLock;
    /// The process's prefix, laid out as an inline id.
    static PREFIX: OnceLock<arrayvec::ArrayString<INLINE_ID>> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // at most 3 + 16 + 1 + 8 + 1 = 29 bytes, leaving room for the counter's 16 digits
        let text = format!("{GENERATED_ID_PREFIX}{nanos:x}-{:x}-", std::process::id());
        let mut prefix = arrayvec::ArrayString::new();
        for c in text.chars().take(INLINE_ID - 16) {
            prefix.push(c);
        }
        prefix
    });
    // the counter in hex after the prefix, without the formatting machinery
    let mut id = *prefix;
    for digit in (0..hex_digits(n)).rev() {
        id.push(char::from(
            b"0123456789abcdef"[((n >> (4 * digit)) & 0xf) as usize],
        ));
    }
    id
}

/// How many hex digits `n` takes, without leading zeros (one for zero).
fn hex_digits(n: u64) -> usize {
    (67 - (n | 1).leading_zeros() as usize) / 4
}

/// Whether `id` was made by the framework ([`message_id`], dead letters), not given by a
/// producer: a broker reporting such an id as a duplicate means a message was dropped,
/// while a producer's own id seen twice is an idempotent retry.
pub fn is_generated_id(id: &str) -> bool {
    id.starts_with(GENERATED_ID_PREFIX)
        || id
            .strip_prefix("dlq-")
            .is_some_and(|rest| rest.starts_with(GENERATED_ID_PREFIX))
}

/// One message: what a backend publishes and delivers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The encoded payload.
    pub payload: Bytes,
    /// Headers (content type, tracing, the application's own).
    pub headers: Headers,
    /// Partitioning / ordering key, where the broker has one.
    pub key: Option<String>,
    /// Broker-assigned or producer-assigned message id.
    pub id: Option<MessageId>,
    /// A broker-native reply address the sender is waiting on (a NATS reply subject,
    /// AMQP `reply-to`, MQTT 5 response topic). A subscriber's reply goes there when set.
    pub reply_to: Option<String>,
}

impl Message {
    /// A message carrying `payload` and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            ..Message::default()
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the key (builder style).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_framework_header_is_held_inline_and_behaves_like_any_other() {
        let mut headers = Headers::new();
        headers.insert("trace-id", "t-1");
        headers.insert_static(CONTENT_TYPE, "application/json");
        assert_eq!(headers.len(), 2);
        assert_eq!(headers.get(CONTENT_TYPE), Some("application/json"));
        // iteration: the framework's header first, then the others in insertion order
        let all: Vec<_> = headers.iter().collect();
        assert_eq!(
            all,
            [(CONTENT_TYPE, "application/json"), ("trace-id", "t-1")]
        );

        // a user's value replaces it, once
        headers.insert(CONTENT_TYPE, "text/csv");
        assert_eq!(headers.get(CONTENT_TYPE), Some("text/csv"));
        assert_eq!(headers.len(), 2);
        // and a later framework value replaces the user's in place
        headers.insert_static(CONTENT_TYPE, "application/msgpack");
        assert_eq!(headers.get(CONTENT_TYPE), Some("application/msgpack"));
        assert_eq!(headers.len(), 2);

        assert_eq!(
            headers.remove(CONTENT_TYPE).as_deref(),
            Some("application/msgpack")
        );
        assert!(!headers.contains(CONTENT_TYPE));
        assert_eq!(headers.len(), 1);

        // a second static header goes with the others
        let mut two = Headers::new();
        two.insert_static("a", "1");
        two.insert_static("b", "2");
        assert_eq!(two.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "2")]);
        two.insert_static("a", "3");
        assert_eq!(two.get("a"), Some("3"));
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn a_received_codec_content_type_is_held_inline_and_reads_the_same() {
        let mut received = Headers::new();
        received.insert_received("trace-id", "t-1");
        received.insert_received(CONTENT_TYPE, "application/json");
        received.insert_received("x-other", "application/json");
        assert!(received.fixed.is_some(), "the codec's constant, not a copy");
        assert_eq!(received.get(CONTENT_TYPE), Some("application/json"));
        assert_eq!(received.get("x-other"), Some("application/json"));
        assert_eq!(received.len(), 3);
        // an unknown content type is kept as sent
        let mut csv = Headers::new();
        csv.insert_received(CONTENT_TYPE, "text/csv");
        assert!(csv.fixed.is_none());
        assert_eq!(csv.get(CONTENT_TYPE), Some("text/csv"));
    }

    #[test]
    fn ids_read_the_same_inline_or_not() {
        let short = MessageId::from("order-7");
        let long_text = "x".repeat(INLINE_ID + 1);
        let long = MessageId::from(long_text.clone());
        assert!(matches!(short.0, IdRepr::Inline(_)));
        assert!(matches!(long.0, IdRepr::Heap(_)));
        assert_eq!(short, "order-7");
        assert_eq!(long.as_str(), long_text);
        assert_eq!(MessageId::from("x".repeat(INLINE_ID)).len(), INLINE_ID);
        assert_eq!(MessageId::from(String::from("order-7")), short);
        assert_eq!(format!("{short}|{short:?}"), "order-7|\"order-7\"");
        assert_eq!(String::from(short.clone()), "order-7");
        assert_eq!(MessageId::from("ünï"), "ünï");
    }

    #[test]
    fn generated_ids_are_inline_distinct_and_recognised() {
        let ids: Vec<MessageId> = (0..1000).map(|_| message_id()).collect();
        for id in &ids {
            assert!(matches!(id.0, IdRepr::Inline(_)), "{id}");
            assert!(is_generated_id(id));
        }
        let distinct: std::collections::HashSet<&str> = ids.iter().map(|id| id.as_str()).collect();
        assert_eq!(distinct.len(), ids.len());
        // one prefix, then the counter in hex without leading zeros
        let prefix = |id: &str| id.rsplit_once('-').map(|(prefix, _)| prefix.to_string());
        for id in &ids {
            let (_, counter) = id.rsplit_once('-').unwrap();
            assert_eq!(prefix(id), prefix(&ids[0]));
            let n = u64::from_str_radix(counter, 16).unwrap();
            assert_eq!(format!("{n:x}"), counter);
        }
        for n in [
            0,
            1,
            15,
            16,
            255,
            256,
            0xfff,
            0x1000,
            u64::MAX >> 4,
            u64::MAX,
        ] {
            assert_eq!(hex_digits(n), format!("{n:x}").len(), "{n:x}");
        }
    }

    #[test]
    fn a_threads_ids_follow_its_block_across_carries_and_blocks() {
        let mut ids = ThreadIds {
            last: arrayvec::ArrayString::new(),
            next: 0,
            end: 0,
        };
        let counter = |id: &MessageId| {
            let (_, counter) = id.rsplit_once('-').unwrap();
            u64::from_str_radix(counter, 16).unwrap()
        };
        let made: Vec<MessageId> = (0..ID_BLOCK + 40).map(|_| ids.next()).collect();
        // each one the id of its counter value, written out in full
        for id in &made {
            assert_eq!(*id, generated_id(counter(id)).as_str());
        }
        // one after the other within a block (across carries), a new block after it
        for pair in made[..ID_BLOCK as usize].windows(2) {
            assert_eq!(counter(&pair[1]), counter(&pair[0]) + 1, "{pair:?}");
        }
        let distinct: std::collections::HashSet<&str> = made.iter().map(|id| id.as_str()).collect();
        assert_eq!(distinct.len(), made.len());
    }

    #[test]
    fn headers_are_equal_by_what_they_hold() {
        let mut inline = Headers::new();
        inline.insert_static(CONTENT_TYPE, "application/json");
        let mut owned = Headers::new();
        owned.insert(CONTENT_TYPE, "application/json");
        assert_eq!(inline, owned);
        owned.insert("x", "1");
        assert_ne!(inline, owned);
        assert_eq!(Headers::new(), Headers::default());
    }
}
