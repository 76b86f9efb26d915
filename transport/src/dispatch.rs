//! The one pipeline every delivery goes through, whatever the broker:
//! concurrency limit -> decode + handler (the generated glue) -> outcome ->
//! ack / retry / dead-letter; and the drain on shutdown.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::backend::{Capabilities, Delivery, Subscription};
use crate::context::Context;
use crate::error::Error;
use crate::message::Message;
use crate::publisher::Publisher;
use crate::registry::{HandlerFn, Outcome, Registration};

/// Header names set on dead-lettered messages.
pub mod headers {
    /// The error's message.
    pub const ERROR: &str = "x-transport-error";
    /// `handler`, `panic` or `decode`.
    pub const ERROR_KIND: &str = "x-transport-error-kind";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "x-transport-attempts";
    /// The topic the message was consumed from.
    pub const ORIGINAL_TOPIC: &str = "x-transport-original-topic";
    /// The subscriber that gave up on it.
    pub const SUBSCRIBER: &str = "x-transport-subscriber";
    /// The subscriber's group, when it has one.
    pub const GROUP: &str = "x-transport-group";
    /// Unix time in milliseconds when it was dead-lettered.
    pub const FAILED_AT: &str = "x-transport-failed-at";
}

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
    pub dead_letter_topic: String,
    pub capabilities: Capabilities,
    pub publisher: Publisher,
}

enum Failure {
    Handler(Error),
    Panic(String),
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Failure::Handler(_) => "handler",
            Failure::Panic(_) => "panic",
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Handler(error) => error.to_string(),
            Failure::Panic(message) => format!("handler panicked: {message}"),
        }
    }
}

impl Dispatcher {
    /// Runs until `shutdown` fires or the subscription ends, then stops fetching and
    /// lets in-flight deliveries finish within `drain_timeout`.
    pub async fn run(
        self,
        mut subscription: Subscription,
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) {
        let this = Arc::new(self);
        let limit = this.concurrency.max(1);
        let mut in_flight = FuturesUnordered::new();
        loop {
            if in_flight.len() >= limit {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = in_flight.next() => {}
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                delivery = subscription.next() => match delivery {
                    Some(delivery) => in_flight.push(Arc::clone(&this).guarded(delivery)),
                    None => break,
                },
            }
        }
        // Stop fetching before draining: nothing new starts once shutdown has begun.
        drop(subscription);
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
        }
    }

    /// `process`, with a panic outside the handler (a backend's, say) contained: the
    /// delivery is dropped unsettled, so the broker hands it out again, and the
    /// subscriber goes on.
    async fn guarded(self: Arc<Self>, delivery: Delivery) {
        let name = self.registration.name;
        if let Err(panic) = AssertUnwindSafe(self.process(delivery))
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

    async fn process(self: Arc<Self>, delivery: Delivery) {
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
            self.dead_letter(delivery, attempt, "malformed", defect).await;
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
            };
            let outcome = AssertUnwindSafe((self.handler)(context))
                .catch_unwind()
                .await;
            let failure = match outcome {
                Ok(Outcome::Handled) => {
                    delivery.ack();
                    return;
                }
                Ok(Outcome::Undecodable(error)) => {
                    tracing::error!(
                        subscriber = self.registration.name,
                        topic = &*self.topic,
                        message_id = delivery.message.id.as_deref(),
                        dead_letter = %self.dead_letter_topic,
                        %error,
                        "payload does not decode; dead-lettering it"
                    );
                    self.dead_letter(delivery, attempt, "decode", error.to_string())
                        .await;
                    return;
                }
                Ok(Outcome::Failed(error)) => Failure::Handler(error),
                Err(panic) => Failure::Panic(panic_message(&*panic)),
            };
            if attempt >= self.retry.max_attempts {
                tracing::warn!(
                    subscriber = self.registration.name,
                    topic = &*self.topic,
                    attempt,
                    error = %failure.describe(),
                    "giving up; dead-lettering"
                );
                self.dead_letter(delivery, attempt, failure.kind(), failure.describe())
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
            if self.capabilities.native_redelivery && delivery.is_settled_by_broker() {
                delivery.nack(delay);
                return;
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Publishes the message to the dead-letter topic, then acks the original. If the
    /// dead-letter publish fails, the original is not acked (it comes back).
    async fn dead_letter(&self, delivery: Delivery, attempts: u32, kind: &str, error: String) {
        let mut message: Message = (*delivery.message).clone();
        let failed_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        message.headers.insert(headers::ERROR, header_text(&error));
        message.headers.insert(headers::ERROR_KIND, kind);
        message
            .headers
            .insert(headers::ATTEMPTS, attempts.to_string());
        message
            .headers
            .insert(headers::ORIGINAL_TOPIC, &*self.topic);
        message
            .headers
            .insert(headers::SUBSCRIBER, self.registration.name);
        if let Some(group) = &self.group {
            message.headers.insert(headers::GROUP, &**group);
        }
        message
            .headers
            .insert(headers::FAILED_AT, failed_at.to_string());
        match self
            .publisher
            .publish_message(&self.dead_letter_topic, message)
            .await
        {
            Ok(()) => delivery.ack(),
            Err(error) if delivery.is_settled_by_broker() => {
                tracing::error!(
                    subscriber = self.registration.name,
                    %error,
                    "dead-letter publish failed; the message stays with the broker and comes back"
                );
                delivery.nack(self.retry.backoff_max);
            }
            Err(error) => {
                tracing::error!(
                    subscriber = self.registration.name,
                    %error,
                    payload_bytes = delivery.message.payload.len(),
                    "dead-letter publish failed on an at-most-once backend; the message is lost"
                );
            }
        }
    }
}

/// Most characters of an error kept in the `x-transport-error` header.
pub const MAX_ERROR_HEADER_CHARS: usize = 1024;

/// An error message as a header value: one line (CR/LF and other control characters
/// become spaces; several brokers' headers cannot carry them) of bounded length.
fn header_text(error: &str) -> String {
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
