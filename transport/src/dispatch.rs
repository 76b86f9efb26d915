//! The one pipeline every delivery goes through, whatever the broker:
//! concurrency limit -> size check -> decode + handler (the generated glue, under a
//! timeout) -> outcome -> ack / retry / dead-letter; resubscription when a backend's
//! stream ends; and the drain on shutdown.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Capabilities, Delivery, Subscription, SubscriptionSpec};
use crate::context::{Context, SubscriptionInfo};
use crate::dead_letter::{self, DeadLetters, Reason};
use crate::error::{BackendError, Error, PublishError, Verdict};
use crate::metrics::{FailureKind, SubscriberMetrics};
use crate::registry::{HandlerFn, HandlerSlot, Outcome, Registration};
use crate::trace::TraceContext;

pub use crate::config::RetryPolicy;
pub use crate::dead_letter::MAX_ERROR_HEADER_CHARS;
/// Header names set on dead-lettered messages (see [`crate::dead_letter::headers`]).
pub use crate::dead_letter::headers;

/// Everything one subscriber's dispatcher needs.
pub(crate) struct Dispatcher {
    pub registration: &'static Registration,
    pub handler: HandlerFn,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Retry in place (never through the broker), so nothing overtakes a failing message.
    pub ordered: bool,
    pub handler_timeout: Duration,
    /// Larger consumed payloads are dead-lettered without being decoded.
    pub max_message_bytes: usize,
    pub dead_letter_topic: String,
    pub capabilities: Capabilities,
    pub backend: Arc<dyn Backend>,
    pub spec: SubscriptionSpec,
    pub dead_letters: DeadLetters,
    /// Topic, group and publisher: what each delivery's `Context` shares.
    pub info: Arc<SubscriptionInfo>,
    pub metrics: SubscriberMetrics,
    /// Whether the subscription is bound, for readiness.
    pub bound: Arc<crate::health::Bound>,
    /// Whether a delivery without a trace context starts one (`publisher.trace_context`),
    /// so what its handler publishes shares a trace.
    pub trace: bool,
}

enum Failure {
    Handler(Error),
    Panic(String),
    Timeout(Duration),
}

impl Failure {
    fn metric(&self) -> FailureKind {
        match self {
            Failure::Handler(_) => FailureKind::Handler,
            Failure::Panic(_) => FailureKind::Panic,
            Failure::Timeout(_) => FailureKind::Timeout,
        }
    }

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
    metrics: SubscriberMetrics,
    bound: Arc<crate::health::Bound>,
}

enum SourceState {
    Active(Subscription),
    Waiting(Pin<Box<tokio::time::Sleep>>),
    Subscribing(BoxFuture<'static, Result<Subscription, BackendError>>),
}

impl Source {
    /// The next delivery.
    async fn next(&mut self) -> Delivery {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polled directly rather than through an `async fn`: on the hot path this is one
    /// poll of the backend's stream and nothing else.
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Delivery> {
        loop {
            match &mut self.state {
                SourceState::Active(subscription) => match subscription.poll_next_unpin(cx) {
                    Poll::Ready(Some(delivery)) => {
                        self.backoff = RESUBSCRIBE_BACKOFF.0;
                        return Poll::Ready(delivery);
                    }
                    Poll::Ready(None) => {
                        self.bound.set(false);
                        tracing::warn!(
                            subscriber = %self.spec.subscriber,
                            topic = %self.spec.topic,
                            retry_in = ?self.backoff,
                            "the backend ended the subscription; subscribing again"
                        );
                        self.state =
                            SourceState::Waiting(Box::pin(tokio::time::sleep(self.backoff)));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                SourceState::Waiting(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let backend = Arc::clone(&self.backend);
                    let spec = self.spec.clone();
                    self.state = SourceState::Subscribing(
                        async move { backend.subscribe(&spec).await }.boxed(),
                    );
                }
                SourceState::Subscribing(subscribing) => match subscribing.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(subscription)) => {
                        tracing::info!(
                            subscriber = %self.spec.subscriber,
                            topic = %self.spec.topic,
                            "subscribed again"
                        );
                        self.metrics.resubscribed();
                        self.bound.set(true);
                        self.state = SourceState::Active(subscription);
                    }
                    Poll::Ready(Err(error)) => {
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

/// The deliveries being handled when `concurrency > 1`: a task each, so they run in
/// parallel and a handler that blocks its thread does not stall its siblings. A task
/// ends with its delivery's lane, so the lane's next delivery can start.
struct InFlight(JoinSet<Option<u64>>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn push(&mut self, work: impl Future<Output = Option<u64>> + Send + 'static) {
        self.0.spawn(work);
    }

    /// Waits for one to finish, and gives its lane; `None` when there are none.
    async fn next(&mut self) -> Option<Option<u64>> {
        self.0.join_next().await.map(|joined| match joined {
            Ok(lane) => lane,
            Err(error) => {
                if error.is_panic() {
                    tracing::error!(%error, "a delivery task panicked");
                }
                // (a cancelled task: its lane is being drained away anyway)
                None
            }
        })
    }

    /// Cancels what is left: their deliveries are dropped unsettled (they come back).
    /// Does not wait: a task blocking its thread cannot be cancelled and is left to
    /// finish on its own.
    fn cancel(&mut self) {
        self.0.abort_all();
        self.0.detach_all();
    }
}

/// Deliveries waiting for their lane (`Delivery::lane`): one runs per lane at a time.
#[derive(Default)]
struct Lanes {
    /// Every busy lane, and what waits behind its running delivery, in order.
    busy: std::collections::HashMap<u64, std::collections::VecDeque<Delivery>>,
    waiting: usize,
}

impl Lanes {
    /// `delivery` if it may start now, else `None` (it waits behind its lane).
    fn admit(&mut self, delivery: Delivery) -> Option<Delivery> {
        let Some(lane) = delivery.lane() else {
            return Some(delivery);
        };
        match self.busy.entry(lane) {
            std::collections::hash_map::Entry::Occupied(mut queue) => {
                queue.get_mut().push_back(delivery);
                self.waiting += 1;
                None
            }
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(std::collections::VecDeque::new());
                Some(delivery)
            }
        }
    }

    /// A delivery of `lane` finished: the lane's next one, to start now.
    fn finished(&mut self, lane: Option<u64>) -> Option<Delivery> {
        let lane = lane?;
        let queue = self.busy.get_mut(&lane)?;
        match queue.pop_front() {
            Some(next) => {
                self.waiting -= 1;
                Some(next)
            }
            None => {
                self.busy.remove(&lane);
                None
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
            metrics: this.metrics.clone(),
            bound: Arc::clone(&this.bound),
        };
        if limit == 1 {
            return this
                .run_one_at_a_time(source, shutdown, drain_timeout)
                .await;
        }
        let mut in_flight = InFlight(JoinSet::new());
        let mut lanes = Lanes::default();
        let start = |in_flight: &mut InFlight, delivery: Delivery| {
            let this = Arc::clone(&this);
            let shutdown = shutdown.clone();
            let lane = delivery.lane();
            in_flight.push(async move {
                this.guarded(delivery, &shutdown, None).await;
                lane
            });
        };
        // deliveries waiting behind their lane (up to `prefetch` of them): a busy lane
        // does not hold the others back
        let max_waiting = this.spec.prefetch.max(limit);
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            if in_flight.len() >= limit || lanes.waiting >= max_waiting {
                tokio::select! {
                    biased;
                    _ = &mut cancelled => break,
                    Some(lane) = in_flight.next() => {
                        if let Some(next) = lanes.finished(lane) {
                            start(&mut in_flight, next);
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                Some(lane) = in_flight.next(), if in_flight.len() > 0 => {
                    if let Some(next) = lanes.finished(lane) {
                        start(&mut in_flight, next);
                    }
                }
                delivery = source.next() => {
                    if let Some(delivery) = lanes.admit(delivery) {
                        start(&mut in_flight, delivery);
                    }
                }
            }
        }
        // deliveries that never started are dropped unsettled (they come back)
        drop(lanes);
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

    /// `concurrency = 1`: each delivery is handled on this task, no task or set of
    /// futures per message. Shutdown during a handler gives it `drain_timeout`.
    async fn run_one_at_a_time(
        &self,
        mut source: Source,
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) {
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        // one place the handler's futures run in, one after the other (no allocation each)
        let mut slot = self.handler.slot();
        loop {
            // shutdown first; its future (a lock to register) is only polled when no
            // delivery is ready, the flag read otherwise
            if shutdown.is_cancelled() {
                return;
            }
            let ready = std::future::poll_fn(|cx| Poll::Ready(source.poll_next(cx))).await;
            let delivery = match ready {
                Poll::Ready(delivery) => delivery,
                Poll::Pending => tokio::select! {
                    biased;
                    _ = &mut cancelled => return,
                    delivery = source.next() => delivery,
                },
            };
            let work = self.guarded(delivery, &shutdown, slot.as_mut());
            tokio::pin!(work);
            tokio::select! {
                biased;
                () = &mut work => {}
                _ = &mut cancelled => {
                    // stop fetching, let the handler finish within the drain timeout
                    drop(source);
                    tracing::debug!(subscriber = self.registration.name, pending = 1, "draining");
                    if tokio::time::timeout(drain_timeout, &mut work).await.is_err() {
                        tracing::warn!(
                            subscriber = self.registration.name,
                            unfinished = 1,
                            timeout = ?drain_timeout,
                            "drain timeout: unfinished handlers are cancelled and their messages left unacknowledged"
                        );
                    }
                    return;
                }
            }
        }
    }

    /// `process`, with a panic outside the handler (a backend's, say) contained: the
    /// delivery is dropped unsettled, so the broker hands it out again, and the
    /// subscriber goes on.
    async fn guarded(
        &self,
        delivery: Delivery,
        shutdown: &CancellationToken,
        slot: Option<&mut Box<dyn HandlerSlot>>,
    ) {
        let name = self.registration.name;
        // counted, and in flight until settled or dropped (cancelled at the drain's end)
        let _handling = Handling::new(&self.metrics);
        if let Err(panic) = AssertUnwindSafe(self.process(delivery, shutdown, slot))
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

    async fn process(
        &self,
        delivery: Delivery,
        shutdown: &CancellationToken,
        mut slot: Option<&mut Box<dyn HandlerSlot>>,
    ) {
        let mut attempt = delivery.attempt;
        if let Some(defect) = delivery.defect() {
            let defect = defect.to_string();
            tracing::error!(
                subscriber = self.registration.name,
                topic = &*self.info.topic,
                message_id = delivery.message.id.as_deref(),
                dead_letter = %self.dead_letter_topic,
                %defect,
                "broker entry is not a message; dead-lettering it"
            );
            self.dead_letter(delivery, attempt, "malformed", &defect, shutdown)
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
                topic = &*self.info.topic,
                message_id = delivery.message.id.as_deref(),
                dead_letter = %self.dead_letter_topic,
                "{error}; dead-lettering it undecoded"
            );
            self.dead_letter(delivery, attempt, "too-large", &error, shutdown)
                .await;
            return;
        }
        // the delivery's place in its trace: a child of the producer's, or a new trace
        let parent = TraceContext::from_headers(&delivery.message.headers);
        let mut trace = match &parent {
            Some(parent) => Some(parent.child()),
            // its ids drawn only if asked for (a publish, a recorded trace id)
            None => self.trace.then(TraceContext::pending),
        };
        loop {
            let context = Context {
                message: Arc::clone(&delivery.message),
                subscription: Arc::clone(&self.info),
                topic: delivery.topic().cloned(),
                attempt,
                reply_headers: Default::default(),
            };
            let span = crate::trace::span!(
                INFO,
                "transport.deliver",
                "consumer",
                subscriber = self.registration.name,
                topic = delivery.topic().map_or(&*self.info.topic, |topic| topic),
                group = self.info.group.as_deref(),
                attempt,
                message_id = delivery.message.id.as_deref(),
                trace_id = tracing::field::Empty,
                outcome = tracing::field::Empty
            );
            // with OpenTelemetry recording the span, the context is the span's own
            #[cfg(feature = "opentelemetry")]
            let mut recorded = if span.is_disabled() || (parent.is_none() && !self.trace) {
                None
            } else {
                crate::otel::deliver(&span, parent.as_ref())
            };
            #[cfg(not(feature = "opentelemetry"))]
            let mut recorded: Option<TraceContext> = None;
            let scope = match recorded {
                Some(_) => &mut recorded,
                None => &mut trace,
            };
            if !span.is_disabled()
                && let Some(trace) = scope.as_mut()
            {
                trace.settle();
                span.record("trace_id", tracing::field::display(trace.trace_field()));
            }
            let handler = match slot.as_mut() {
                Some(slot) => {
                    slot.start(context);
                    Running::InSlot(slot)
                }
                None => Running::Boxed(self.handler.call(context)),
            };
            let mut run = Run {
                handler,
                span: &span,
                trace: scope,
            };
            let started = self.metrics.start();
            // the timer (a clock read, a timer entry) only for a handler that does not
            // finish on its first poll
            let finished = match poll_once(Pin::new(&mut run)).await {
                Poll::Ready(result) => Ok(result),
                Poll::Pending => tokio::time::timeout(self.handler_timeout, &mut run).await,
            };
            drop(run);
            self.metrics.ran(started);
            // (a disabled span would still look the field up by name)
            if !span.is_disabled() {
                span.record(
                    "outcome",
                    match &finished {
                        Ok(Ok(Outcome::Handled)) => "handled",
                        Ok(Ok(Outcome::Undecodable(_))) => "undecodable",
                        Ok(Ok(Outcome::Failed(_))) => "failed",
                        Ok(Err(_)) => "panicked",
                        Err(_) => "timed out",
                    },
                );
            }
            if !matches!(finished, Ok(Ok(Outcome::Handled))) {
                crate::trace::failed(&span);
            }
            let failure = match finished {
                Ok(Ok(Outcome::Handled)) => {
                    self.metrics.handled();
                    delivery.ack();
                    return;
                }
                Ok(Ok(Outcome::Undecodable(error))) => {
                    self.metrics.decode_error();
                    tracing::error!(
                        subscriber = self.registration.name,
                        topic = &*self.info.topic,
                        message_id = delivery.message.id.as_deref(),
                        dead_letter = %self.dead_letter_topic,
                        %error,
                        "payload does not decode; dead-lettering it"
                    );
                    self.dead_letter(delivery, attempt, "decode", &error.to_string(), shutdown)
                        .await;
                    return;
                }
                Ok(Ok(Outcome::Failed(error))) => Failure::Handler(error),
                Ok(Err(panic)) => Failure::Panic(panic_message(&*panic)),
                Err(_) => Failure::Timeout(self.handler_timeout),
            };
            self.metrics.failed(failure.metric());
            // what the handler asked for, if it said
            let verdict = match &failure {
                Failure::Handler(error) => error.verdict(),
                _ => Verdict::Retry,
            };
            if verdict == Verdict::Discard {
                tracing::warn!(
                    subscriber = self.registration.name,
                    topic = &*self.info.topic,
                    message_id = delivery.message.id.as_deref(),
                    attempt,
                    error = %failure.describe(),
                    "handler failed and discarded the message; acknowledged, not retried or dead-lettered"
                );
                delivery.ack();
                return;
            }
            let asked = verdict == Verdict::DeadLetter;
            if asked || attempt >= self.retry.max_attempts {
                tracing::warn!(
                    subscriber = self.registration.name,
                    topic = &*self.info.topic,
                    attempt,
                    error = %failure.describe(),
                    "{}",
                    if asked {
                        "handler failed and asked for the dead letter now"
                    } else {
                        "giving up; dead-lettering"
                    }
                );
                self.dead_letter(
                    delivery,
                    attempt,
                    failure.kind(),
                    &failure.describe(),
                    shutdown,
                )
                .await;
                return;
            }
            let delay = match verdict {
                Verdict::RetryAfter(delay) => delay,
                _ => self.retry.delay_after(attempt),
            };
            tracing::debug!(
                subscriber = self.registration.name,
                attempt,
                ?delay,
                error = %failure.describe(),
                "handler failed; will retry"
            );
            self.metrics.retried();
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
            topic: delivery.topic().map_or(&self.info.topic, |topic| topic),
            subscriber: self.registration.name,
            group: self.info.group.as_deref(),
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
                .info
                .publisher
                .publish_dead_letter(&self.dead_letter_topic, letter.clone())
                .await;
            let error = match published {
                Ok(()) => {
                    self.metrics.dead_lettered(kind);
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

/// A delivery being handled, for the in-flight gauge: received on creation, finished on
/// drop, however the handling ends.
struct Handling<'a>(&'a SubscriberMetrics);

impl<'a> Handling<'a> {
    fn new(metrics: &'a SubscriberMetrics) -> Self {
        metrics.received();
        Handling(metrics)
    }
}

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// A handler being run: each poll inside its delivery's span (as `Instrumented`) and
/// trace context (publishes name it as parent), a panic caught (as `CatchUnwind`). One
/// future rather than a wrapper each: this is every delivery's.
struct Run<'a> {
    /// Ended when dropped, inside the span.
    handler: Running<'a>,
    span: &'a tracing::Span,
    trace: &'a mut Option<TraceContext>,
}

/// The handler's future: boxed, or in the dispatcher's slot.
enum Running<'a> {
    Boxed(BoxFuture<'static, Outcome>),
    InSlot(&'a mut Box<dyn HandlerSlot>),
    Ended,
}

impl Running<'_> {
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Outcome> {
        match self {
            Running::Boxed(future) => future.as_mut().poll(cx),
            Running::InSlot(slot) => slot.poll_run(cx),
            Running::Ended => Poll::Pending, // (never polled once ended)
        }
    }

    /// Drops the handler's future (its slot kept for the next delivery).
    fn end(&mut self) {
        match std::mem::replace(self, Running::Ended) {
            Running::Boxed(future) => drop(future),
            Running::InSlot(slot) => slot.clear(),
            Running::Ended => {}
        }
    }
}

impl Future for Run<'_> {
    type Output = std::thread::Result<Outcome>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let _entered = (!this.span.is_disabled()).then(|| this.span.enter());
        let _lent = this.trace.is_some().then(|| crate::trace::lend(this.trace));
        let handler = &mut this.handler;
        match std::panic::catch_unwind(AssertUnwindSafe(|| handler.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(outcome)) => Poll::Ready(Ok(outcome)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if !matches!(self.handler, Running::Ended) {
            let _entered = (!self.span.is_disabled()).then(|| self.span.enter());
            self.handler.end();
        }
    }
}

/// Polls `future` once: its output if it is ready at once, else `Pending` (its waker is
/// registered, and it may be awaited further).
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
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
