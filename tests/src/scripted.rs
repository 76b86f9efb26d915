//! A scripted backend for runtime tests: hands out prepared deliveries, records what is
//! published and how deliveries are settled, and fails publishes on request. For the
//! dispatcher's decisions that no real broker lets a test provoke at will.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use transport::backend::{
    Acknowledge, Backend, Capabilities, Delivery, Publish, Subscription, SubscriptionSpec,
};
use transport::{BackendError, Message};

/// How a delivery was settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// `ack`, with the delivery's payload.
    Ack(String),
    /// `nack`, with the delivery's payload.
    Nack(String),
}

struct Acker {
    payload: String,
    events: UnboundedSender<Settled>,
}

impl Acknowledge for Acker {
    fn ack(self: Box<Self>) {
        let _ = self.events.send(Settled::Ack(self.payload));
    }
    fn nack(self: Box<Self>, _delay: Duration) {
        let _ = self.events.send(Settled::Nack(self.payload));
    }
}

/// What one `subscribe` call hands out.
pub struct Script {
    deliveries: Vec<Delivery>,
    /// Whether the stream ends after them (else it stays open).
    ends: bool,
}

/// The scripted backend.
pub struct Scripted {
    scripts: Mutex<VecDeque<Script>>,
    failures: Mutex<HashMap<String, usize>>,
    limits: Mutex<HashMap<String, usize>>,
    published: Mutex<Vec<(String, Message)>>,
    subscribes: AtomicUsize,
    events: UnboundedSender<Settled>,
    native_redelivery: bool,
}

impl Scripted {
    /// A backend whose broker redelivers on nack (`native_redelivery`) or not; the
    /// receiver reports every ack and nack.
    pub fn new(native_redelivery: bool) -> (Self, UnboundedReceiver<Settled>) {
        let (events, rx) = mpsc::unbounded_channel();
        let backend = Scripted {
            scripts: Mutex::new(VecDeque::new()),
            failures: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            published: Mutex::new(Vec::new()),
            subscribes: AtomicUsize::new(0),
            events,
            native_redelivery,
        };
        (backend, rx)
    }

    /// A delivery of `payload` at `attempt`, reporting its settlement.
    pub fn delivery(&self, payload: &str, attempt: u32) -> Delivery {
        Delivery::new(
            Message::new(payload.to_string().into_bytes()),
            attempt,
            Box::new(Acker {
                payload: payload.to_string(),
                events: self.events.clone(),
            }),
        )
    }

    /// The next `subscribe` hands out `deliveries`, then ends its stream if `ends`.
    pub fn script(self, deliveries: Vec<Delivery>, ends: bool) -> Self {
        self.scripts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(Script { deliveries, ends });
        self
    }

    /// The next `times` publishes to `topic` fail.
    pub fn fail_publishes(self, topic: &str, times: usize) -> Self {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_string(), times);
        self
    }

    /// Publishes to `topic` of more than `limit` bytes (payload and headers) fail with
    /// `BackendError::TooLarge`, as a broker whose limit is lower than it said.
    pub fn limit_publishes(self, topic: &str, limit: usize) -> Self {
        self.limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_string(), limit);
        self
    }

    /// Everything published so far.
    pub fn published(&self) -> Vec<(String, Message)> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How often `subscribe` was called.
    pub fn subscribes(&self) -> usize {
        self.subscribes.load(Ordering::SeqCst)
    }
}

impl Backend for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: false,
            persistence: false,
            ordering: true,
            at_least_once: true,
            native_redelivery: self.native_redelivery,
            headers: true,
            keys: true,
        }
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        let fail = {
            let mut failures = self
                .failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match failures.get_mut(topic) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        };
        let size = message.payload.len()
            + message
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>();
        let limit = self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .copied();
        if let Some(limit) = limit
            && size > limit
        {
            return Publish::ready(Err(BackendError::TooLarge {
                backend: "scripted",
                size,
                limit,
            }));
        }
        if !fail {
            self.published
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((topic.to_string(), message));
        }
        Publish::ready(if fail {
            Err(BackendError::Operation {
                backend: "scripted",
                operation: "publish",
                reason: "scripted failure".into(),
            })
        } else {
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        _spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        self.subscribes.fetch_add(1, Ordering::SeqCst);
        let script = self
            .scripts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front();
        async move {
            Ok(match script {
                Some(Script {
                    deliveries,
                    ends: true,
                }) => futures_util::stream::iter(deliveries).boxed(),
                Some(Script { deliveries, .. }) => futures_util::stream::iter(deliveries)
                    .chain(futures_util::stream::pending())
                    .boxed(),
                None => futures_util::stream::pending().boxed(),
            })
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async { Ok(()) }.boxed()
    }
}
