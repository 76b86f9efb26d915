//! The embedded in-process broker: the default backend and the reference implementation
//! of the backend contract.
//!
//! - no group: every subscription gets its own queue (fan-out);
//! - a group: its members share one queue (competing consumers);
//! - at-least-once within the process: a delivery that is nacked, or dropped without an
//!   ack (a handler cancelled at shutdown), goes back to its queue with `attempt + 1`.
//!
//! Brokers are named: every `App` in a process that selects `memory` with the same
//! `name` shares one broker, so two Apps can compete in one group as two processes would
//! on a real broker. Nothing is kept on disk, and a message published where no
//! subscriber listens is dropped.
//!
//! MQTT topic filters (`mqtt_filter`) are matched here against each topic's MQTT form
//! ([`mqtt_filter::mqtt_name`]), so a service written for MQTT runs on this broker too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};

use super::mqtt_filter;
use super::name_hash::NameMap;
use super::{
    Acknowledge, Backend, Capabilities, Delivery, Publish, Settle, Subscription, SubscriptionSpec,
};
use crate::error::BackendError;
use crate::message::Message;

mod queue;

const KIND: &str = "memory";

/// Settings of an in-process broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Messages a queue holds; publishing to a full one is an error (never a wait).
    pub queue_capacity: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            queue_capacity: 65_536,
        }
    }
}

/// An in-process broker. Cloning gives another handle to the same broker.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    options: MemoryOptions,
    topics: Mutex<Topics>,
}

/// The queues of every topic and filter.
#[derive(Default)]
struct Topics {
    names: NamedTopics,
    /// Subscriptions to MQTT filters, by filter; looked at only when there are some.
    filters: Vec<(String, TopicQueues)>,
}

/// The queues of every topic, by name.
#[derive(Default)]
struct NamedTopics {
    /// Each topic's place in `named` (a topic, once there, stays).
    places: Names,
    /// Every topic's name and queues.
    named: Vec<(String, TopicQueues)>,
    /// The place of the topic published to last: a publisher sending to one topic again
    /// and again finds it by one comparison of names, without hashing.
    last: usize,
}

impl NamedTopics {
    /// The queues of `topic`, if it has any.
    #[inline]
    fn get_mut(&mut self, topic: &str) -> Option<&mut TopicQueues> {
        let index = match self.named.get(self.last) {
            Some((name, _)) if same_name(name, topic) => self.last,
            _ => {
                let index = *self.places.get(topic)?;
                self.last = index;
                index
            }
        };
        self.named.get_mut(index).map(|(_, queues)| queues)
    }

    /// The queues of `topic`, made if it has none yet.
    fn get_or_new(&mut self, topic: &str) -> &mut TopicQueues {
        let index = match self.places.get(topic) {
            Some(&index) => index,
            None => {
                self.named.push((topic.to_string(), TopicQueues::default()));
                self.places.insert(topic.to_string(), self.named.len() - 1);
                self.named.len() - 1
            }
        };
        &mut self.named[index].1
    }
}

/// Whether two topic names are equal, compared eight bytes at a time with fixed-size loads
/// where both are 8 to 16 bytes long (most names: no call to `memcmp`).
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    if !(8..=16).contains(&a.len()) {
        return a == b;
    }
    let word = |bytes: &[u8], start: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[start..start + 8]);
        u64::from_le_bytes(word)
    };
    let tail = a.len() - 8;
    word(a, 0) == word(b, 0) && word(a, tail) == word(b, tail)
}

/// Topics by name (hashed a word at a time: every publish looks one up).
type Names = NameMap<usize>;

#[derive(Default)]
struct TopicQueues {
    fanout: Vec<Queue>,
    /// A group's queue, and its receiving end for members yet to join (weak, so the
    /// queue closes when its last member leaves).
    groups: HashMap<String, (Queue, queue::WeakReceiver<Envelope>)>,
    /// Every live queue of the topic; what `publish` sends to. Rebuilt on change.
    targets: Arc<[Queue]>,
}

impl TopicQueues {
    fn prune(&mut self) {
        self.fanout.retain(|q| !q.is_closed());
        self.groups.retain(|_, (q, _)| !q.is_closed());
        self.targets = self
            .fanout
            .iter()
            .chain(self.groups.values().map(|(q, _)| q))
            .cloned()
            .collect();
    }
}

type Queue = queue::Sender<Envelope>;

#[derive(Clone)]
struct Envelope {
    message: Held,
    attempt: u32,
    /// The topic it was published to, for a subscription to a filter.
    topic: Option<Arc<str>>,
}

/// A queued message: never copied.
#[derive(Clone)]
enum Held {
    /// Bound for one queue only (the common case): its delivery's shared handle is made
    /// by the consuming thread, which also frees it, so the allocator's fast path serves
    /// both (an allocation freed by another thread takes its slow path).
    Alone(Message),
    /// Shared by the queues of a fan-out, a filter's delivery, a requeued message.
    Shared(Arc<Message>),
}

impl Held {
    fn shared(self) -> Arc<Message> {
        match self {
            Held::Alone(message) => Arc::new(message),
            Held::Shared(message) => message,
        }
    }
}

fn registry() -> &'static Mutex<HashMap<String, MemoryBroker>> {
    static BROKERS: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
    BROKERS.get_or_init(Default::default)
}

impl MemoryBroker {
    /// A new broker of its own, shared with nobody.
    pub fn new(options: MemoryOptions) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                options,
                topics: Mutex::new(Topics::default()),
            }),
        }
    }

    /// The process-wide broker called `name`, created with `options` on first use.
    pub fn named(name: &str, options: MemoryOptions) -> Self {
        let mut brokers = registry().lock().unwrap_or_else(PoisonError::into_inner);
        brokers
            .entry(name.to_string())
            .or_insert_with(|| MemoryBroker::new(options))
            .clone()
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, Topics> {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The queue a new subscription reads: its receiving end, and its sending end for
    /// requeues.
    fn queue_for(&self, spec: &SubscriptionSpec) -> (queue::Receiver<Envelope>, Queue) {
        let mut topics = self.topics();
        let queues = if spec.filter {
            let filters = &mut topics.filters;
            let index = match filters.iter().position(|(f, _)| *f == spec.topic) {
                Some(index) => index,
                None => {
                    filters.push((spec.topic.clone(), TopicQueues::default()));
                    filters.len() - 1
                }
            };
            &mut filters[index].1
        } else {
            topics.names.get_or_new(&spec.topic)
        };
        queues.prune();
        let existing = spec.group.as_ref().and_then(|group| {
            let (tx, weak) = queues.groups.get(group)?;
            Some((weak.upgrade()?, tx.clone()))
        });
        let pair = match (existing, &spec.group) {
            (Some(pair), _) => pair,
            (None, None) => {
                let (tx, rx) = queue::unbounded();
                queues.fanout.push(tx.clone());
                (rx, tx)
            }
            (None, Some(group)) => {
                let (tx, rx) = queue::unbounded();
                queues
                    .groups
                    .insert(group.clone(), (tx.clone(), rx.downgrade()));
                (rx, tx)
            }
        };
        queues.prune();
        pair
    }

    /// Puts `message` in every queue of `topic`, at once (never waiting).
    #[inline]
    fn enqueue(&self, topic: &str, message: Message) -> Result<(), BackendError> {
        // sending never waits, so it happens under the lock (no copy of the queue list)
        let mut topics = self.topics();
        let Topics { names, filters } = &mut *topics;
        let mut named = names.get_mut(topic);
        let mut matching: Vec<&mut TopicQueues> = Vec::new();
        if !filters.is_empty() {
            let name = mqtt_filter::mqtt_name(topic);
            matching.extend(
                filters
                    .iter_mut()
                    .filter(|(filter, _)| mqtt_filter::matches(filter, &name))
                    .map(|(_, queues)| queues),
            );
        }
        // Never wait for room: a handler publishing into its own full queue would wait
        // for itself. A full queue is an error the publisher sees (and a handler
        // retries); every queue is checked first so a message goes to all or none.
        let capacity = self.inner.options.queue_capacity.max(1);
        let full = |queues: &TopicQueues| {
            queues
                .targets
                .iter()
                .any(|q| !q.is_closed() && q.len() >= capacity)
        };
        if named.as_deref().is_some_and(full) || matching.iter().any(|queues| full(queues)) {
            return Err(BackendError::Operation {
                backend: KIND,
                operation: "publish",
                reason: format!(
                    "a queue of topic `{topic}` is full ({capacity} messages, `broker.queue_capacity`): its subscribers are behind"
                ),
            });
        }
        if matching.is_empty()
            && let Some(queues) = named.as_deref_mut()
            && let [queue] = &*queues.targets
        {
            // one queue: the message moves into it
            let envelope = Envelope {
                message: Held::Alone(message),
                attempt: 1,
                topic: None,
            };
            let closed = queue.try_send(envelope).is_err();
            if closed {
                queues.prune();
            }
            return Ok(());
        }
        let mut envelope = Envelope {
            message: Held::Shared(Arc::new(message)),
            attempt: 1,
            topic: None,
        };
        if let Some(queues) = named {
            send_to(queues, &envelope);
        }
        if !matching.is_empty() {
            envelope.topic = Some(Arc::from(topic));
            for queues in matching {
                send_to(queues, &envelope);
            }
        }
        Ok(())
    }
}

/// Puts `envelope` in every queue of `queues` (which have room).
fn send_to(queues: &mut TopicQueues, envelope: &Envelope) {
    let mut closed = false;
    for queue in queues.targets.iter() {
        closed |= queue.try_send(envelope.clone()).is_err();
    }
    if closed {
        queues.prune();
    }
}

impl Backend for MemoryBroker {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            persistence: false,
            ordering: true,
            at_least_once: true,
            native_redelivery: true,
            headers: true,
            keys: true,
        }
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        Publish::ready(self.enqueue(topic, message))
    }

    fn publish_deferred<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
        delay: Duration,
    ) -> Publish<'a> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Publish::ready(Err(BackendError::Unsupported {
                backend: KIND,
                what: "defer a message outside a Tokio runtime",
            }));
        };
        // held back here, then published as any message (a full queue then drops it,
        // logged: nobody waits for it any more)
        let broker = self.clone();
        let topic = topic.to_string();
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(error) = broker.enqueue(&topic, message) {
                tracing::error!(%error, topic, "deferred message dropped");
            }
        });
        Publish::ready(Ok(()))
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        async move {
            let (receiver, queue) = self.queue_for(spec);
            let requeue = Arc::new(Requeue { queue });
            let stream = Deliveries {
                receiver,
                settle: Arc::clone(&requeue) as Arc<dyn Settle>,
                requeue,
                spare: None,
            };
            Ok(stream.boxed())
        }
        .boxed()
    }

    fn validate_filter(&self, filter: &str) -> Result<(), BackendError> {
        mqtt_filter::check_filter(KIND, filter)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        // Nothing to flush: acks settle synchronously and the broker outlives any App
        // that uses it (other Apps in the process may share it).
        async { Ok(()) }.boxed()
    }
}

/// A subscription's deliveries, as they come out of its queue.
struct Deliveries {
    receiver: queue::Receiver<Envelope>,
    requeue: Arc<Requeue>,
    /// `requeue`, as the handle deliveries of a topic name are settled by.
    settle: Arc<dyn Settle>,
    /// The shared handle of the last small message handed out: once every delivery and
    /// context holding it is gone (one at a time, the usual case) the next message moves
    /// into it, so a delivery allocates nothing of its own.
    spare: Option<Arc<Message>>,
}

/// Largest payload whose message is kept as [`Deliveries::spare`] until the next delivery.
const SPARE_PAYLOAD: usize = 4096;

impl Deliveries {
    /// `held` as a shared handle: the spare one when nothing else holds it any more.
    fn shared(&mut self, held: Held) -> Arc<Message> {
        let message = match held {
            Held::Alone(message) => message,
            Held::Shared(message) => return message,
        };
        let shared = match self.spare.take() {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                Some(slot) => {
                    // (the last message's contents go now)
                    *slot = message;
                    spare
                }
                None => Arc::new(message),
            },
            None => Arc::new(message),
        };
        if shared.payload.len() <= SPARE_PAYLOAD {
            self.spare = Some(Arc::clone(&shared));
        }
        shared
    }

    #[inline]
    fn delivery(&mut self, envelope: Envelope) -> Delivery {
        match envelope.topic {
            // a filter's delivery comes back with its topic: settled by a handle of its
            // own (filters are rare; names take the shared one)
            Some(topic) => {
                let message = envelope.message.shared();
                Delivery::new(
                    Arc::clone(&message),
                    envelope.attempt,
                    Box::new(TopicRequeue {
                        requeue: Arc::clone(&self.requeue),
                        envelope: Some(Envelope {
                            message: Held::Shared(message),
                            attempt: envelope.attempt,
                            topic: Some(Arc::clone(&topic)),
                        }),
                    }),
                )
                .with_topic(topic)
            }
            None => Delivery::settled_by(
                self.shared(envelope.message),
                envelope.attempt,
                Arc::clone(&self.settle),
                0,
            ),
        }
    }
}

impl futures_util::Stream for Deliveries {
    type Item = Delivery;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Delivery>> {
        let this = self.get_mut();
        this.receiver
            .poll_next_unpin(cx)
            .map(|envelope| envelope.map(|envelope| this.delivery(envelope)))
    }
}

/// Settles a subscription's deliveries: an ack forgets the message (nothing to tell
/// anyone), a nack or a delivery dropped unsettled puts it back in the queue.
struct Requeue {
    queue: Queue,
}

impl Requeue {
    fn requeue(&self, message: &Arc<Message>, attempt: u32, delay: Duration) {
        self.requeue_envelope(
            Envelope {
                message: Held::Shared(Arc::clone(message)),
                attempt,
                topic: None,
            },
            delay,
        );
    }

    /// Puts `envelope` back in the queue as its next attempt, after `delay`.
    fn requeue_envelope(&self, mut envelope: Envelope, delay: Duration) {
        envelope.attempt = envelope.attempt.saturating_add(1);
        if delay.is_zero() {
            // Queues are unbounded: this fails only when every subscriber left, and the
            // message goes with them.
            let _ = self.queue.try_send(envelope);
            return;
        }
        let queue = self.queue.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tokio::time::sleep(delay).await;
                    // A closed queue means every subscriber left; the message goes with it.
                    let _ = queue.try_send(envelope);
                });
            }
            Err(_) => {
                tracing::warn!(
                    "memory broker: message dropped outside a Tokio runtime could not be requeued"
                );
            }
        }
    }
}

impl Settle for Requeue {
    fn ack(&self, _token: u64) {}

    fn nack(&self, _token: u64, delay: Duration, message: &Arc<Message>, attempt: u32) {
        self.requeue(message, attempt, delay);
    }

    fn dropped(&self, _token: u64, message: &Arc<Message>, attempt: u32) {
        // Neither acked nor nacked: the handler never finished. Redeliver at once.
        self.requeue(message, attempt, Duration::ZERO);
    }
}

/// Settles one delivery of a filter subscription, which comes back (nacked, or dropped
/// unsettled) with the topic it was published to.
struct TopicRequeue {
    requeue: Arc<Requeue>,
    /// Taken when settled.
    envelope: Option<Envelope>,
}

impl Acknowledge for TopicRequeue {
    fn ack(mut self: Box<Self>) {
        self.envelope = None;
    }

    fn nack(mut self: Box<Self>, delay: Duration) {
        if let Some(envelope) = self.envelope.take() {
            self.requeue.requeue_envelope(envelope, delay);
        }
    }
}

impl Drop for TopicRequeue {
    fn drop(&mut self) {
        // neither acked nor nacked: the handler never finished; redeliver at once
        if let Some(envelope) = self.envelope.take() {
            self.requeue.requeue_envelope(envelope, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn publishes_switching_between_topics_reach_each_topics_own_queue() {
        let broker = MemoryBroker::new(MemoryOptions::default());
        // names of every length class the comparison treats apart, two of each length
        let names = [
            "a",
            "b",
            "sensor.a",
            "sensor.b",
            "sensor.rdgs.a",
            "sensor.rdgs.b",
            "sensor.readings.",
            "sensor.readings,",
            "sensor.readings.a",
            "sensor.readings.b",
        ];
        let mut streams = Vec::new();
        for topic in names {
            streams.push(
                broker
                    .subscribe(&SubscriptionSpec::fan_out(topic))
                    .await
                    .unwrap(),
            );
        }
        // the same topic again and again, then switching on every publish
        for round in 0..3u8 {
            for (i, topic) in names.iter().enumerate() {
                for _ in 0..2 {
                    broker
                        .publish(topic, Message::new(vec![i as u8, round]))
                        .await
                        .unwrap();
                }
            }
            for (i, topic) in names.iter().enumerate().rev() {
                broker
                    .publish(topic, Message::new(vec![i as u8, round + 10]))
                    .await
                    .unwrap();
            }
        }
        for (i, stream) in streams.iter_mut().enumerate() {
            for round in 0..3u8 {
                for expected in [[i as u8, round], [i as u8, round], [i as u8, round + 10]] {
                    let delivery = stream.next().await.unwrap();
                    assert_eq!(&delivery.message.payload[..], &expected[..], "{}", names[i]);
                    delivery.ack();
                }
            }
        }
        assert!(same_name("sensor.readings", "sensor.readings"));
        assert!(!same_name("sensor.readings", "sensor.readingz"));
        assert!(!same_name("sensor.readings", "zensor.readings"));
        assert!(!same_name("sensor.r", "sensor.readings"));
    }

    #[tokio::test]
    async fn a_delivery_moves_into_the_last_one_s_handle_once_nothing_holds_it() {
        let broker = MemoryBroker::new(MemoryOptions::default());
        let mut deliveries = broker
            .subscribe(&SubscriptionSpec::fan_out("spare"))
            .await
            .unwrap();
        for i in 0..4u8 {
            broker
                .publish("spare", Message::new(vec![i]))
                .await
                .unwrap();
        }
        let first = deliveries.next().await.unwrap();
        // still held: the next one has a handle of its own, and the first is untouched
        let second = deliveries.next().await.unwrap();
        assert!(!Arc::ptr_eq(&first.message, &second.message));
        let second_at = Arc::as_ptr(&second.message);
        first.ack();
        second.ack();
        // (anything freed would be handed out again here, not to the next delivery)
        let _occupied = Arc::new(Message::default());
        let third = deliveries.next().await.unwrap();
        assert_eq!(
            Arc::as_ptr(&third.message),
            second_at,
            "not moved into the spare"
        );
        assert_eq!(&third.message.payload[..], [2]);
        // a context still holding it (a handler's clone): the fourth gets its own
        let held = Arc::clone(&third.message);
        third.ack();
        let fourth = deliveries.next().await.unwrap();
        assert!(!Arc::ptr_eq(&held, &fourth.message));
        assert_eq!(
            (&held.payload[..], &fourth.message.payload[..]),
            (&[2][..], &[3][..])
        );
        // a large message is not kept once its delivery is done
        broker
            .publish("spare", Message::new(vec![7; SPARE_PAYLOAD + 1]))
            .await
            .unwrap();
        let large = deliveries.next().await.unwrap();
        let weak = Arc::downgrade(&large.message);
        large.ack();
        assert!(weak.upgrade().is_none(), "the large message was kept");
    }
}
