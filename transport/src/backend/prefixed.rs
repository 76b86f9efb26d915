//! `broker.topic_prefix`: every topic travels with a prefix on the wire, while handlers,
//! publishers and dead-letter headers keep the names the code declares. An MQTT topic
//! filter (`mqtt_filter`), and a name holding `/` (an MQTT topic name, as a foreign
//! topic tree spells it: `/hfp/v2/...`), belong to a tree the prefix is not part of: they
//! are used as they are.

use std::sync::Arc;

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
        })
    }
}

/// A name of a foreign MQTT topic tree, which takes no prefix.
fn foreign(topic: &str) -> bool {
    topic.contains('/')
}

struct Prefixed {
    inner: Arc<dyn Backend>,
    prefix: String,
}

impl Prefixed {
    /// `topic` as the broker knows it. Concatenated, not `format!`ted, and held inline
    /// when short: this runs twice on every publish.
    fn wire_name(&self, topic: &str) -> WireName {
        WireName::new(&self.prefix, topic)
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
        if foreign(topic) {
            return self.inner.publish(topic, message);
        }
        Publish::boxed(async move {
            let topic = self.wire_name(topic);
            self.inner.publish(topic.as_str(), message).await
        })
    }

    fn publish_deferred<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
        delay: std::time::Duration,
    ) -> Publish<'a> {
        if foreign(topic) {
            return self.inner.publish_deferred(topic, message, delay);
        }
        Publish::boxed(async move {
            let topic = self.wire_name(topic);
            self.inner
                .publish_deferred(topic.as_str(), message, delay)
                .await
        })
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> Publish<'a> {
        if foreign(topic) {
            return self.inner.publish_batch(topic, messages);
        }
        Publish::boxed(async move {
            let topic = self.wire_name(topic);
            self.inner.publish_batch(topic.as_str(), messages).await
        })
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
