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
    /// `topic` as the broker knows it. Concatenated, not `format!`ted: this runs twice
    /// on every publish, and the formatting machinery costs ten times as much.
    fn wire_name(&self, topic: &str) -> String {
        let mut name = String::with_capacity(self.prefix.len() + topic.len());
        name.push_str(&self.prefix);
        name.push_str(topic);
        name
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
            self.inner.publish(&topic, message).await
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
            self.inner.publish_deferred(&topic, message, delay).await
        })
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> Publish<'a> {
        if foreign(topic) {
            return self.inner.publish_batch(topic, messages);
        }
        Publish::boxed(async move {
            let topic = self.wire_name(topic);
            self.inner.publish_batch(&topic, messages).await
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
                topic: self.wire_name(&spec.topic),
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
        self.inner.validate_topic(&self.wire_name(topic))
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
