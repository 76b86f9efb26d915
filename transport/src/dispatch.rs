//! The one pipeline every delivery goes through, whatever the broker:
//! concurrency limit -> size check -> decode + handler (the generated glue, under a
//! timeout) -> outcome -> ack / retry / dead-letter; resubscription when a backend's
//! stream ends; and the drain on shutdown.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Capabilities, Delivery, Subscription, SubscriptionSpec};
use crate::context::Context;
use crate::dead_letter::{self, DeadLetters, Reason};
use crate::error::{BackendError, Error, PublishError};
use crate::publisher::Publisher;
use crate::registry::{HandlerFn, Outcome, Registration};

pub use crate::dead_letter::MAX_ERROR_HEADER_CHARS;
/// Header names set on dead-lettered messages (see [`crate::dead_letter::headers`]).
pub use crate::dead_letter::headers;

/// How often and how patiently a failing message is retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub backoff: Duration,
    /// Upper bound of the delay.
    pub backoff_max: Duration,
    /// Growth factor of the delay per attempt.
    pub multiplier: f64,
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let factor = self.multiplier.max(1.0).powi(exponent);
        let delay = self.backoff.as_secs_f64() * factor;
        if !delay.is_finite() || delay >= self.backoff_max.as_secs_f64() {
            self.backoff_max
        } else {
            Duration::from_secs_f64(delay)
        }
    }
}

/// Everything one subscriber's dispatcher needs.
pub(crate) struct Dispatcher {
    pub registration: &'static Registration,
    pub handler: HandlerFn,
    pub topic: Arc<str>,
    pub group: Option<Arc<str>>,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Retry in place (never through the broker), so nothing overtakes a failing message.
    pub ordered: bool,
    pub handler_timeout: Duration,
    /// Larger consumed payloads are dead-lettered without being decoded.
    pub max_message_bytes: usize,
    pub dead_letter_topic: String,
    pub capabilities: Capabilities,
    pub publisher: Publisher,
    pub backend: Arc<dyn Backend>,
    pub spec: SubscriptionSpec,
    pub dead_letters: DeadLetters,
}

enum Failure {
    Handler(Error),
    Panic(String),
    Timeout(Duration),
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Failure::Handler(_) => "handler",
            Failure::Panic(_) => "panic",
            Failure::Timeout(_) => "timeout",
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Handler(error) => error.to_string(),
            Failure::Panic(message) => format!("handler panicked: {message}"),
            Failure::Timeout(limit) => format!(
                "handler did not finish within {} (handler_timeout)",
                humantime_serde::re::humantime::format_duration(*limit)
            ),
        }
    }
}

/// The shortest and longest wait before subscribing again after a subscription ended.
const RESUBSCRIBE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(10));

/// The deliveries of one subscription, subscribing again (with backoff) whenever the
/// backend's stream ends while the App runs. Cancel-safe: every wait keeps its state here.
struct Source {
    backend: Arc<dyn Backend>,
    spec: SubscriptionSpec,
    state: SourceState,
    backoff: Duration,
}

enum SourceState {
    Active(Subscription),
    Waiting(Pin<Box<tokio::time::Sleep>>),
    Subscribing(BoxFuture<'static, Result<Subscription, BackendError>>),
}

impl Source {
    async fn next(&mut self) -> Delivery {
        loop {
            match &mut self.state {
                SourceState::Active(subscription) => match subscription.next().await {
                    Some(delivery) => {
                        self.backoff = RESUBSCRIBE_BACKOFF.0;
                        return delivery;
                    }
                    None => {
                        tracing::warn!(
                            subscriber = %self.spec.subscriber,
                            topic = %self.spec.topic,
                            retry_in = ?self.backoff,
                            "the backend ended the subscription; subscribing again"
                        );
                        self.state =
                            SourceState::Waiting(Box::pin(tokio::time::sleep(self.backoff)));
                    }
                },
                SourceState::Waiting(sleep) => {
                    sleep.as_mut().await;
                    let backend = Arc::clone(&self.backend);
                    let spec = self.spec.clone();
                    self.state = SourceState::Subscribing(
                        async move { backend.subscribe(&spec).await }.boxed(),
                    );
                }
                SourceState::Subscribing(subscribing) => match subscribing.await {
                    Ok(subscription) => {
                        tracing::info!(
                            subscriber = %self.spec.subscriber,
                            topic = %self.spec.topic,
                            "subscribed again"
                        );
                        self.state = SourceState::Active(subscription);
                    }
                    Err(error) => {
                        self.backoff = (self.backoff * 2).min(RESUBSCRIBE_BACKOFF.1);
                        tracing::error!(
                            subscriber = %self.spec.subscriber,
                            topic = %self.spec.topic,
                            %error,
                            retry_in = ?self.backoff,
                            "subscribing again failed"
                        );
                        self.state =
                            SourceState::Waiting(Box::pin(tokio::time::sleep(self.backoff)));
                    }
                },
            }
        }
    }
}

/// The deliveries being handled: on the dispatcher's own task when one runs at a time
/// (no spawn per message), as tasks of their own when `concurrency > 1`, so they run in
/// parallel and a handler that blocks its thread does not stall its siblings.
enum InFlight<F> {
    Inline(FuturesUnordered<F>),
    Spawned(JoinSet<()>),
}

impl<F: Future<Output = ()> + Send + 'static> InFlight<F> {
    fn new(concurrency: usize) -> Self {
        if concurrency <= 1 {
            InFlight::Inline(FuturesUnordered::new())
        } else {
            InFlight::Spawned(JoinSet::new())
        }
    }

    fn len(&self) -> usize {
        match self {
            InFlight::Inline(set) => set.len(),
            InFlight::Spawned(set) => set.len(),
        }
    }

    fn push(&mut self, work: F) {
        match self {
            InFlight::Inline(set) => set.push(work),
            InFlight::Spawned(set) => {
                set.spawn(work);
            }
        }
    }

    /// Waits for one to finish; `None` when there are none.
    async fn next(&mut self) -> Option<()> {
        match self {
            InFlight::Inline(set) => set.next().await,
            InFlight::Spawned(set) => set.join_next().await.map(|joined| {
                if let Err(error) = joined
                    && error.is_panic()
                {
                    tracing::error!(%error, "a delivery task panicked");
                }
            }),
        }
    }

    /// Cancels what is left: their deliveries are dropped unsettled (they come back).
    /// Does not wait: a task blocking its thread cannot be cancelled and is left to
    /// finish on its own.
    fn cancel(&mut self) {
        match self {
            InFlight::Inline(set) => set.clear(),
            InFlight::Spawned(set) => {
                set.abort_all();
                set.detach_all();
            }
        }
    }
}

impl Dispatcher {
    /// Runs until `shutdown` fires, then stops fetching and lets in-flight deliveries
    /// finish within `drain_timeout`. A subscription the backend ends is subscribed
    /// again (with backoff); the dispatcher never stops silently.
    pub async fn run(
        self,
        subscription: Subscription,
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) {
        let this = Arc::new(self);
        let limit = this.concurrency.max(1);
        let mut source = Source {
            backend: Arc::clone(&this.backend),
            spec: this.spec.clone(),
            state: SourceState::Active(subscription),
            backoff: RESUBSCRIBE_BACKOFF.0,
        };
        let mut in_flight = InFlight::new(limit);
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            if in_flight.len() >= limit {
                tokio::select! {
                    biased;
                    _ = &mut cancelled => break,
                    _ = in_flight.next() => {}
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                Some(()) = in_flight.next(), if in_flight.len() > 0 => {}
                delivery = source.next() => {
                    in_flight.push(Arc::clone(&this).guarded(delivery, shutdown.clone()));
                }
            }
        }
        // Stop fetching before draining: nothing new starts once shutdown has begun.
        drop(source);
        let pending = in_flight.len();
        if pending > 0 {
            tracing::debug!(subscriber = this.registration.name, pending, "draining");
        }
        let drained = tokio::time::timeout(drain_timeout, async {
            while in_flight.next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                subscriber = this.registration.name,
                unfinished = in_flight.len(),
                timeout = ?drain_timeout,
                "drain timeout: unfinished handlers are cancelled and their messages left unacknowledged"
            );
            in_flight.cancel();
        }
    }

    /// `process`, with a panic outside the handler (a backend's, say) contained: the
    /// delivery is dropped unsettled, so the broker hands it out again, and the
    /// subscriber goes on.
    async fn guarded(self: Arc<Self>, delivery: Delivery, shutdown: CancellationToken) {
        let name = self.registration.name;
        if let Err(panic) = AssertUnwindSafe(self.process(delivery, shutdown))
            .catch_unwind()
            .await
        {
            tracing::error!(
                subscriber = name,
                panic = %panic_message(&*panic),
                "panic while settling a delivery; it was left unsettled"
            );
        }
    }

    async fn process(self: Arc<Self>, delivery: Delivery, shutdown: CancellationToken) {
        let mut attempt = delivery.attempt;
        if let Some(defect) = delivery.defect() {
            let defect = defect.to_string();
            tracing::error!(
                subscriber = self.registration.name,
                topic = &*self.topic,
                message_id = delivery.message.id.as_deref(),
                dead_letter = %self.dead_letter_topic,
                %defect,
                "broker entry is not a message; dead-lettering it"
            );
            self.dead_letter(delivery, attempt, "malformed", &defect, &shutdown)
                .await;
            return;
        }
        let size = delivery.message.payload.len();
        if size > self.max_message_bytes {
            let error = format!(
                "payload of {size} bytes exceeds max_message_bytes ({})",
                self.max_message_bytes
            );
            tracing::error!(
                subscriber = self.registration.name,
                topic = &*self.topic,
                message_id = delivery.message.id.as_deref(),
                dead_letter = %self.dead_letter_topic,
                "{error}; dead-lettering it undecoded"
            );
            self.dead_letter(delivery, attempt, "too-large", &error, &shutdown)
                .await;
            return;
        }
        loop {
            let context = Context {
                message: Arc::clone(&delivery.message),
                topic: Arc::clone(&self.topic),
                group: self.group.clone(),
                subscriber: self.registration.name,
                attempt,
                publisher: self.publisher.clone(),
                reply_headers: Default::default(),
            };
            let run = AssertUnwindSafe((self.handler)(context)).catch_unwind();
            let failure = match tokio::time::timeout(self.handler_timeout, run).await {
                Ok(Ok(Outcome::Handled)) => {
                    delivery.ack();
                    return;
                }
                Ok(Ok(Outcome::Undecodable(error))) => {
                    tracing::error!(
                        subscriber = self.registration.name,
                        topic = &*self.topic,
                        message_id = delivery.message.id.as_deref(),
                        dead_letter = %self.dead_letter_topic,
                        %error,
                        "payload does not decode; dead-lettering it"
                    );
                    self.dead_letter(delivery, attempt, "decode", &error.to_string(), &shutdown)
                        .await;
                    return;
                }
                Ok(Ok(Outcome::Failed(error))) => Failure::Handler(error),
                Ok(Err(panic)) => Failure::Panic(panic_message(&*panic)),
                Err(_) => Failure::Timeout(self.handler_timeout),
            };
            if attempt >= self.retry.max_attempts {
                tracing::warn!(
                    subscriber = self.registration.name,
                    topic = &*self.topic,
                    attempt,
                    error = %failure.describe(),
                    "giving up; dead-lettering"
                );
                self.dead_letter(
                    delivery,
                    attempt,
                    failure.kind(),
                    &failure.describe(),
                    &shutdown,
                )
                .await;
                return;
            }
            let delay = self.retry.delay_after(attempt);
            tracing::debug!(
                subscriber = self.registration.name,
                attempt,
                ?delay,
                error = %failure.describe(),
                "handler failed; will retry"
            );
            if !self.ordered
                && self.capabilities.native_redelivery
                && delivery.is_settled_by_broker()
            {
                delivery.nack(delay);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // a broker that keeps the message takes it back at once; an at-most-once
                // delivery is retried until the drain timeout ends it
                _ = shutdown.cancelled(), if delivery.is_settled_by_broker() => {
                    delivery.nack(Duration::ZERO);
                    return;
                }
            }
            attempt += 1;
        }
    }

    /// Publishes the dead letter, then acks the original. A failed publish is retried in
    /// place with backoff (the handler does not run again; the backend keeps the
    /// delivery in progress meanwhile) until it succeeds or shutdown begins.
    async fn dead_letter(
        &self,
        delivery: Delivery,
        attempts: u32,
        kind: &'static str,
        error: &str,
        shutdown: &CancellationToken,
    ) {
        let reason = Reason {
            kind,
            error,
            attempts,
            topic: &self.topic,
            subscriber: self.registration.name,
            group: self.group.as_deref(),
        };
        let mut letter = dead_letter::letter(
            &delivery.message,
            &reason,
            |name| self.backend.owns_header(name),
            self.backend.max_message_size(),
        );
        let mut failures = 0u32;
        loop {
            let published = self
                .publisher
                .publish_dead_letter(&self.dead_letter_topic, letter.clone())
                .await;
            let error = match published {
                Ok(()) => {
                    self.dead_letters.published(&self.dead_letter_topic, letter);
                    delivery.ack();
                    return;
                }
                Err(error) => error,
            };
            self.dead_letters.failed();
            failures += 1;
            // the broker's own limit is lower than it said (a stream's max_msg_size):
            // fit the letter under it and try again at once
            if let PublishError::Backend {
                source: BackendError::TooLarge { limit, .. },
                ..
            } = &error
                && dead_letter::refit(&mut letter, *limit)
            {
                tracing::warn!(
                    subscriber = self.registration.name,
                    dead_letter = %self.dead_letter_topic,
                    limit,
                    "dead letter over the broker's limit; fitted under it"
                );
                continue;
            }
            if shutdown.is_cancelled() {
                self.give_back(delivery, &error.to_string());
                return;
            }
            let delay = self.retry.delay_after(failures);
            tracing::error!(
                subscriber = self.registration.name,
                dead_letter = %self.dead_letter_topic,
                %error,
                failures,
                retry_in = ?delay,
                "dead-letter publish failed; retrying it (the handler does not run again)"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Shutdown came while a dead-letter publish kept failing: the message goes back to
    /// a broker that keeps it (its handler will run again elsewhere: the one case where
    /// it does), or is lost on an at-most-once one.
    fn give_back(&self, delivery: Delivery, error: &str) {
        if delivery.is_settled_by_broker() {
            tracing::error!(
                subscriber = self.registration.name,
                dead_letter = %self.dead_letter_topic,
                %error,
                "dead-letter publish failed until shutdown; the message is handed back to the broker"
            );
            delivery.nack(Duration::ZERO);
        } else {
            tracing::error!(
                subscriber = self.registration.name,
                dead_letter = %self.dead_letter_topic,
                %error,
                payload_bytes = delivery.message.payload.len(),
                "dead-letter publish failed until shutdown on an at-most-once backend; the message is lost"
            );
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        assert_eq!(policy.delay_after(1), Duration::from_millis(100));
        assert_eq!(policy.delay_after(2), Duration::from_millis(200));
        assert_eq!(policy.delay_after(4), Duration::from_millis(800));
        assert_eq!(policy.delay_after(5), Duration::from_secs(1));
        assert_eq!(policy.delay_after(u32::MAX), Duration::from_secs(1));
    }
}
