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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    /// Names and values the framework sets (`content-type`...) are borrowed, not copied.
    entries: Vec<(Cow<'static, str>, Cow<'static, str>)>,
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers {
            entries: Vec::new(),
        }
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Sets `name` to `value`, replacing a previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.set(Cow::Owned(name.into()), Cow::Owned(value.into()));
    }

    /// Sets a header whose name and value live for the whole program, copying nothing.
    pub(crate) fn insert_static(&mut self, name: &'static str, value: &'static str) {
        self.set(Cow::Borrowed(name), Cow::Borrowed(value));
    }

    fn set(&mut self, name: Cow<'static, str>, value: Cow<'static, str>) {
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((name, value)),
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let index = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(index).1.into_owned())
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every header, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

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

/// A new message id: [`GENERATED_ID_PREFIX`], a part made once per process (start time
/// and pid, so ids of different processes differ) and a counter. What the publisher
/// gives every message published without an id, so replies and dead letters can always
/// name their original.
///
/// ```
/// let (a, b) = (transport::message_id(), transport::message_id());
/// assert_ne!(a, b);
/// assert!(transport::is_generated_id(&a));
/// assert!(!transport::is_generated_id("order-7"));
/// ```
pub fn message_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{GENERATED_ID_PREFIX}{nanos:x}-{:x}-", std::process::id())
    });
    // the counter in hex, without the formatting machinery (this runs on every publish)
    let mut n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let mut id = String::with_capacity(prefix.len() + digits.len() - at);
    id.push_str(prefix);
    for &digit in &digits[at..] {
        id.push(char::from(digit));
    }
    id
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
    pub id: Option<String>,
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
