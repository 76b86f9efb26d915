//! `broker.topic_prefix`: every topic travels with a prefix on the wire, while handlers,
//! publishers and dead-letter headers keep the names the code declares. An MQTT topic
//! filter (`mqtt_filter`), and a name holding `/` (an MQTT topic name, as a foreign
//! topic tree spells it: `/hfp/v2/...`), belong to a tree the prefix is not part of: they
//! are used as they are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use futures_util::future::{BoxFuture, FutureExt};

use super::{Backend, Capabilities, Publish, Subscription, SubscriptionSpec};
use crate::error::BackendError;
use crate::message::Message;

/// `backend` itself when `prefix` is empty, else a wrapper prefixing every topic.
pub(crate) fn with_prefix(backend: Arc<dyn Backend>, prefix: &str) -> Arc<dyn Backend> {
    if prefix.is_empty() {
        backend
    } else {
        Arc::new(Prefixed {
            inner: backend,
            prefix: prefix.to_string(),
            kept: KeptNames::new(),
        })
    }
}

/// A name of a foreign MQTT topic tree, which takes no prefix.
fn foreign(topic: &str) -> bool {
    // (a scan the compiler vectorizes, cheaper than `memchr` on a topic's few bytes)
    topic
        .bytes()
        .fold(false, |slash, byte| slash | (byte == b'/'))
}

struct Prefixed {
    inner: Arc<dyn Backend>,
    prefix: String,
    kept: KeptNames,
}

impl Prefixed {
    /// `topic` as the broker knows it. Concatenated, not `format!`ted, and held inline
    /// when short.
    fn wire_name(&self, topic: &str) -> WireName {
        WireName::new(&self.prefix, topic)
    }

    /// `topic`'s wire name for a publish: borrowed where it can be (a foreign name, a
    /// kept one), so the backend's own publish is returned with no future around it.
    fn name_for_publish<'a>(&'a self, topic: &'a str) -> PublishName<'a> {
        if foreign(topic) {
            return PublishName::Borrowed(topic);
        }
        match self.kept.get(&self.prefix, topic) {
            Some(name) => PublishName::Borrowed(name),
            None => PublishName::Made(self.wire_name(topic)),
        }
    }
}

/// A publish's wire name: one that outlives the publish, or one made for it (which the
/// publish's future then holds).
enum PublishName<'a> {
    Borrowed(&'a str),
    Made(WireName),
}

/// The wire names of the first [`KeptNames::MAX`] topics published to, made once and kept
/// for the backend's life, so that a publish borrows its name rather than making one and
/// a future to hold it (the layer's cost per publish ~420 -> ~160 instructions, counted).
/// A program publishing to more topics than that (names made per entity, say) makes the
/// rest per publish: the memory this takes stays bounded.
struct KeptNames {
    /// Filled in order, never emptied: a name set here is borrowed for as long as the
    /// backend.
    names: Box<[OnceLock<Box<str>>]>,
    /// Which slot holds a topic's name.
    slots: Mutex<HashMap<Box<str>, usize>>,
    /// The slot found last: a program publishing to one topic finds its name by one
    /// comparison, without the lock.
    last: AtomicUsize,
}

impl KeptNames {
    const MAX: usize = 256;

    fn new() -> Self {
        KeptNames {
            names: (0..Self::MAX).map(|_| OnceLock::new()).collect(),
            slots: Mutex::new(HashMap::new()),
            last: AtomicUsize::new(0),
        }
    }

    /// `topic`'s wire name (`prefix` then `topic`), kept; `None` once `MAX` are kept
    /// and `topic` is not among them.
    fn get(&self, prefix: &str, topic: &str) -> Option<&str> {
        let is_topics = |name: &str| {
            name.len() == prefix.len() + topic.len()
                && name.as_bytes().get(prefix.len()..) == Some(topic.as_bytes())
        };
        let last = self.last.load(Ordering::Relaxed);
        if let Some(name) = self.names.get(last).and_then(OnceLock::get)
            && is_topics(name)
        {
            return Some(name);
        }
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match slots.get(topic) {
            Some(&slot) => slot,
            None => {
                let slot = slots.len();
                let place = self.names.get(slot)?;
                let mut name = String::with_capacity(prefix.len() + topic.len());
                name.push_str(prefix);
                name.push_str(topic);
                // (set under the lock, once per slot: never already set)
                let _ = place.set(name.into_boxed_str());
                slots.insert(topic.into(), slot);
                slot
            }
        };
        self.last.store(slot, Ordering::Relaxed);
        self.names
            .get(slot)
            .and_then(OnceLock::get)
            .map(|name| &**name)
    }
}

/// A prefixed name: inline up to [`WireName::INLINE`] bytes (no allocation), on the
/// heap beyond.
enum WireName {
    Inline(arrayvec::ArrayString<{ WireName::INLINE }>),
    Heap(String),
}

impl WireName {
    const INLINE: usize = 96;

    fn new(prefix: &str, topic: &str) -> Self {
        let mut name = arrayvec::ArrayString::new();
        if name.try_push_str(prefix).is_ok() && name.try_push_str(topic).is_ok() {
            return WireName::Inline(name);
        }
        let mut name = String::with_capacity(prefix.len() + topic.len());
        name.push_str(prefix);
        name.push_str(topic);
        WireName::Heap(name)
    }

    fn as_str(&self) -> &str {
        match self {
            WireName::Inline(name) => name,
            WireName::Heap(name) => name,
        }
    }
}

impl Backend for Prefixed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        match self.name_for_publish(topic) {
            PublishName::Borrowed(name) => self.inner.publish(name, message),
            PublishName::Made(name) => {
                Publish::boxed(async move { self.inner.publish(name.as_str(), message).await })
            }
        }
    }

    fn publish_deferred<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
        delay: std::time::Duration,
    ) -> Publish<'a> {
        match self.name_for_publish(topic) {
            PublishName::Borrowed(name) => self.inner.publish_deferred(name, message, delay),
            PublishName::Made(name) => Publish::boxed(async move {
                self.inner
                    .publish_deferred(name.as_str(), message, delay)
                    .await
            }),
        }
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> Publish<'a> {
        match self.name_for_publish(topic) {
            PublishName::Borrowed(name) => self.inner.publish_batch(name, messages),
            PublishName::Made(name) => {
                Publish::boxed(
                    async move { self.inner.publish_batch(name.as_str(), messages).await },
                )
            }
        }
    }

    fn reply<'a>(&'a self, address: &'a str, message: Message) -> Publish<'a> {
        self.inner.reply(address, message)
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        async move {
            if spec.filter {
                return self.inner.subscribe(spec).await;
            }
            let spec = SubscriptionSpec {
                topic: self.wire_name(&spec.topic).as_str().to_string(),
                ..spec.clone()
            };
            self.inner.subscribe(&spec).await
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.inner.close()
    }

    fn validate_topic(&self, topic: &str) -> Result<(), BackendError> {
        self.inner.validate_topic(topic)?;
        if foreign(topic) {
            return Ok(());
        }
        // the name on the wire must pass too (a prefix can make it too long)
        self.inner.validate_topic(self.wire_name(topic).as_str())
    }

    fn validate_filter(&self, filter: &str) -> Result<(), BackendError> {
        self.inner.validate_filter(filter)
    }

    fn owns_header(&self, name: &str) -> bool {
        self.inner.owns_header(name)
    }

    fn max_message_size(&self) -> Option<usize> {
        self.inner.max_message_size()
    }

    fn connected(&self) -> bool {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wire_name_is_the_prefix_then_the_topic_inline_or_on_the_heap() {
        let short = WireName::new("tenant-a.", "sensor.readings");
        assert!(matches!(short, WireName::Inline { .. }));
        assert_eq!(short.as_str(), "tenant-a.sensor.readings");
        let exact = "t".repeat(WireName::INLINE - 2);
        assert_eq!(WireName::new("p.", &exact).as_str(), format!("p.{exact}"));
        let long = "é".repeat(WireName::INLINE);
        let heap = WireName::new("préfixe.", &long);
        assert!(matches!(heap, WireName::Heap(_)));
        assert_eq!(heap.as_str(), format!("préfixe.{long}"));
        assert_eq!(WireName::new("", "").as_str(), "");
    }

    #[tokio::test]
    async fn publishes_to_more_topics_than_are_kept_each_reach_their_prefixed_topic() {
        use futures_util::StreamExt;
        let memory: Arc<dyn Backend> = Arc::new(crate::backend::memory::MemoryBroker::new(
            crate::backend::memory::MemoryOptions::default(),
        ));
        let prefixed = Prefixed {
            inner: Arc::clone(&memory),
            prefix: "tenant-a.".into(),
            kept: KeptNames::new(),
        };
        // past the kept names' bound; the last ones differ from kept ones by a suffix
        let topics: Vec<String> = (0..KeptNames::MAX + 30).map(|i| format!("t.{i}")).collect();
        let mut streams = Vec::new();
        for topic in &topics {
            let spec = SubscriptionSpec::fan_out(&format!("tenant-a.{topic}"));
            streams.push(memory.subscribe(&spec).await.unwrap());
        }
        // each topic twice in a row (found by the last-name comparison), in two rounds
        // (found in the table, or past the bound made for the publish)
        for round in 0..2u8 {
            for (i, topic) in topics.iter().enumerate() {
                for _ in 0..2 {
                    let body = format!("{i}/{round}");
                    prefixed.publish(topic, Message::new(body)).await.unwrap();
                }
            }
        }
        prefixed
            .publish_batch(&topics[0], vec![Message::new("0/batch")])
            .await
            .unwrap();
        for (i, stream) in streams.iter_mut().enumerate() {
            let mut expected = vec![format!("{i}/0"); 2];
            expected.extend(vec![format!("{i}/1"); 2]);
            if i == 0 {
                expected.push("0/batch".into());
            }
            for body in expected {
                let delivery = stream.next().await.unwrap();
                assert_eq!(delivery.message.payload, body.as_bytes());
            }
        }
        let kept = prefixed.kept.slots.lock().unwrap().len();
        assert_eq!(kept, KeptNames::MAX, "kept up to the bound, no more");
    }

    #[test]
    fn a_prefix_making_a_name_too_long_is_refused_and_foreign_names_take_none() {
        let memory: Arc<dyn Backend> = Arc::new(crate::backend::memory::MemoryBroker::new(
            crate::backend::memory::MemoryOptions::default(),
        ));
        let prefixed = with_prefix(memory, "tenant-a.");
        assert!(prefixed.validate_topic("sensor.readings").is_ok());
        let longest = "t".repeat(crate::backend::MAX_TOPIC_BYTES);
        assert!(
            prefixed.validate_topic(&longest).is_err(),
            "too long once prefixed"
        );
        assert!(prefixed.validate_topic("/hfp/v2/journey").is_ok());
    }
}
