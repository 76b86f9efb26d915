//! Behaviour around handlers, without touching them: a [`Middleware`] gets each delivery's
//! [`Context`] and the rest of the chain ([`Next`]), and decides what happens before and
//! after (or instead of) the handler. [`App::layer`](crate::App::layer) applies one to
//! every subscriber, [`App::layer_for`](crate::App::layer_for) to one; they run in the
//! order added, App-wide ones outside per-subscriber ones, all inside the dispatcher
//! (which still owns retries, dead letters, timeouts and acknowledgements).
//!
//! Built in: [`ConcurrencyLimit`] (handlers at once across what it wraps), [`RateLimit`]
//! (handler starts per period across what it wraps),
//! [`Idempotent`] (skip a message id already handled, with a pluggable
//! [`IdempotencyStore`]), and [`Classify`] (what a handler's error means: retry, retry
//! later, dead-letter now, drop).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::context::Context;
use crate::error::{Error, Verdict};
use crate::registry::HandlerFn;
pub use crate::registry::Outcome;

/// The rest of the chain after a middleware: the next middleware, and at the end the
/// handler (decode, call, map the result).
#[derive(Clone)]
pub struct Next(HandlerFn);

impl Next {
    /// Runs the rest of the chain with `ctx`.
    pub fn run(&self, ctx: Context) -> BoxFuture<'static, Outcome> {
        self.0.call(ctx)
    }
}

/// Cross-cutting behaviour around handlers (a trait as small as tower's `Service`).
///
/// ```
/// use transport::middleware::{Middleware, Next, Outcome};
/// use transport::Context;
/// use futures_util::future::BoxFuture;
///
/// /// Logs how long each handler took.
/// struct Timed;
///
/// impl Middleware for Timed {
///     fn handle(&self, ctx: Context, next: Next) -> BoxFuture<'static, Outcome> {
///         Box::pin(async move {
///             let (subscriber, started) = (ctx.subscriber(), std::time::Instant::now());
///             let outcome = next.run(ctx).await;
///             tracing::info!(subscriber, elapsed = ?started.elapsed(), "handled");
///             outcome
///         })
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Handles one delivery: run `next` (or not), and return its outcome (or another).
    fn handle(&self, ctx: Context, next: Next) -> BoxFuture<'static, Outcome>;
}

/// `handler` wrapped in `layers`, the first outermost.
pub(crate) fn wrap(handler: HandlerFn, layers: &[Arc<dyn Middleware>]) -> HandlerFn {
    layers.iter().rev().fold(handler, |inner, layer| {
        let layer = Arc::clone(layer);
        let next = Next(inner);
        HandlerFn::new(move |ctx| layer.handle(ctx, next.clone()))
    })
}

/// At most `n` handlers at once across everything it wraps (one instance shared by
/// several subscribers limits them together: a database's connections, say). Deliveries
/// over the limit wait for a slot.
#[derive(Clone)]
pub struct ConcurrencyLimit(Arc<tokio::sync::Semaphore>);

impl ConcurrencyLimit {
    /// A limit of `n` (at least 1).
    pub fn new(n: usize) -> Self {
        ConcurrencyLimit(Arc::new(tokio::sync::Semaphore::new(n.max(1))))
    }
}

impl Middleware for ConcurrencyLimit {
    fn handle(&self, ctx: Context, next: Next) -> BoxFuture<'static, Outcome> {
        let slots = Arc::clone(&self.0);
        async move {
            // (the semaphore is never closed)
            let _slot = slots.acquire_owned().await.ok();
            next.run(ctx).await
        }
        .boxed()
    }
}

/// At most `count` handler starts per `per`, evenly spaced (`per / count` apart; with
/// [`burst`](RateLimit::burst) `b`, up to `b` back to back after a quiet spell), across
/// everything it wraps: a partner API's quota, say. Deliveries over the rate wait their
/// turn in arrival order; one that stops waiting (its timeout, a shutdown) gives its turn
/// back. The wait counts toward `handler_timeout`, and at most the `concurrency` of every
/// subscriber it wraps wait at once: keep their sum times `per / count` below the
/// timeout, or a wait ends as a failed attempt.
#[derive(Clone)]
pub struct RateLimit(Arc<RateState>);

struct RateState {
    interval: std::time::Duration,
    burst: u32,
    /// When the next start would be due if the limiter never idled (GCRA's theoretical
    /// arrival time); held by the one waiter whose turn it is, so waiters go in order.
    due: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl RateLimit {
    /// `count` starts per `per` (`count` at least 1), one at a time.
    pub fn new(count: u32, per: std::time::Duration) -> Self {
        RateLimit(Arc::new(RateState {
            interval: per / count.max(1),
            burst: 1,
            due: tokio::sync::Mutex::new(None),
        }))
    }

    /// Lets up to `burst` starts through back to back after a quiet spell (the average
    /// rate stays `count` per `per`).
    pub fn burst(self, burst: u32) -> Self {
        RateLimit(Arc::new(RateState {
            interval: self.0.interval,
            burst: burst.max(1),
            due: tokio::sync::Mutex::new(None),
        }))
    }
}

impl RateState {
    /// Waits for this caller's turn and takes it; a caller dropped while waiting takes
    /// nothing.
    async fn turn(&self) {
        // (tokio's mutex is fair: waiters are served in the order they came)
        let mut due = self.due.lock().await;
        let now = tokio::time::Instant::now();
        let tat = due.map_or(now, |due| due.max(now));
        let slack = self.interval.saturating_mul(self.burst - 1);
        let start = tat.checked_sub(slack).map_or(now, |at| at.max(now));
        tokio::time::sleep_until(start).await;
        *due = Some(tat.checked_add(self.interval).unwrap_or(tat));
    }
}

impl Middleware for RateLimit {
    fn handle(&self, ctx: Context, next: Next) -> BoxFuture<'static, Outcome> {
        let state = Arc::clone(&self.0);
        async move {
            state.turn().await;
            next.run(ctx).await
        }
        .boxed()
    }
}

/// Where [`Idempotent`] remembers the message ids already handled: in process
/// ([`MemoryStore`]), or shared by the replicas of a service (a Redis set, a database
/// table) by implementing this. Keys are `"<subscriber> <message id>"`: a message fanned
/// out to several subscribers is handled once by each.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Whether `id` was handled already.
    fn seen(&self, id: &str) -> BoxFuture<'_, Result<bool, Error>>;
    /// Remembers that `id` was handled.
    fn remember(&self, id: &str) -> BoxFuture<'_, Result<(), Error>>;
}

/// An in-process [`IdempotencyStore`] keeping the last `capacity` ids.
pub struct MemoryStore {
    capacity: usize,
    ids: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl MemoryStore {
    /// Remembers up to `capacity` ids (at least 1), forgetting the oldest.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            capacity: capacity.max(1),
            ids: Mutex::default(),
        }
    }
}

impl IdempotencyStore for MemoryStore {
    fn seen(&self, id: &str) -> BoxFuture<'_, Result<bool, Error>> {
        let seen = self
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .contains(id);
        futures_util::future::ready(Ok(seen)).boxed()
    }

    fn remember(&self, id: &str) -> BoxFuture<'_, Result<(), Error>> {
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        let (set, order) = &mut *ids;
        if set.insert(id.to_string()) {
            order.push_back(id.to_string());
            while order.len() > self.capacity {
                if let Some(oldest) = order.pop_front() {
                    set.remove(&oldest);
                }
            }
        }
        futures_util::future::ready(Ok(())).boxed()
    }
}

/// Runs a message's handler once per message id (the producer's: a `message-id` header
/// where the broker's own id is another, as on Redis streams): a delivery whose id the store has seen
/// is acknowledged without running the handler (a broker's redelivery, a producer's
/// retry); an id is remembered once its handler succeeded. A delivery whose id is being
/// handled in this process at that moment is acknowledged too (the first one's retries
/// and dead letter still stand for it). A message without an id runs. A store that fails
/// counts as the handler failing (retried, then dead-lettered).
#[derive(Clone)]
pub struct Idempotent {
    store: Arc<dyn IdempotencyStore>,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl Idempotent {
    /// Ids kept in `store`.
    pub fn new(store: impl IdempotencyStore) -> Self {
        Idempotent {
            store: Arc::new(store),
            in_flight: Arc::default(),
        }
    }
}

/// An id being handled, released when its handling ends (or is cancelled).
struct Claim(Arc<Mutex<HashSet<String>>>, String);

impl Claim {
    fn take(in_flight: &Arc<Mutex<HashSet<String>>>, id: &str) -> Option<Self> {
        let mut ids = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        ids.insert(id.to_string())
            .then(|| Claim(Arc::clone(in_flight), id.to_string()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.1);
    }
}

impl Middleware for Idempotent {
    fn handle(&self, ctx: Context, next: Next) -> BoxFuture<'static, Outcome> {
        let (store, in_flight) = (Arc::clone(&self.store), Arc::clone(&self.in_flight));
        async move {
            // the producer's id where the broker keeps its own apart (a Redis stream's
            // entry id, the given one in `message-id`); per subscriber: one message
            // fanned out to several is handled by each
            let Some(id) = ctx
                .header("message-id")
                .or(ctx.message_id())
                .map(|id| format!("{} {id}", ctx.subscriber()))
            else {
                return next.run(ctx).await;
            };
            let Some(_claim) = Claim::take(&in_flight, &id) else {
                tracing::debug!(subscriber = ctx.subscriber(), message_id = %id, "being handled already; skipped");
                return Outcome::Handled;
            };
            match store.seen(&id).await {
                Ok(true) => {
                    tracing::debug!(subscriber = ctx.subscriber(), message_id = %id, "already handled; skipped");
                    return Outcome::Handled;
                }
                Ok(false) => {}
                Err(error) => return Outcome::Failed(error),
            }
            let outcome = next.run(ctx).await;
            if matches!(outcome, Outcome::Handled)
                && let Err(error) = store.remember(&id).await
            {
                return Outcome::Failed(error);
            }
            outcome
        }
        .boxed()
    }
}

/// Decides what a handler's error means where the handler did not say
/// ([`Error::verdict`] is [`Verdict::Retry`]): retry, retry after a delay, dead-letter
/// now, or drop.
///
/// ```
/// use transport::middleware::Classify;
/// use transport::Verdict;
///
/// // errors saying "invalid" never succeed on a retry
/// let classify = Classify::new(|error: &transport::Error| {
///     if error.to_string().contains("invalid") { Verdict::DeadLetter } else { Verdict::Retry }
/// });
/// ```
#[derive(Clone)]
pub struct Classify(Arc<dyn Fn(&Error) -> Verdict + Send + Sync>);

impl Classify {
    /// Classifies with `rule`.
    pub fn new(rule: impl Fn(&Error) -> Verdict + Send + Sync + 'static) -> Self {
        Classify(Arc::new(rule))
    }
}

impl Middleware for Classify {
    fn handle(&self, ctx: Context, next: Next) -> BoxFuture<'static, Outcome> {
        let rule = Arc::clone(&self.0);
        async move {
            match next.run(ctx).await {
                Outcome::Failed(error) if error.verdict() == Verdict::Retry => {
                    let verdict = rule(&error);
                    Outcome::Failed(error.with_verdict(verdict))
                }
                other => other,
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_turn_given_up_is_given_back() {
        let limit = RateLimit::new(1, Duration::from_secs(1));
        let began = tokio::time::Instant::now();
        limit.0.turn().await;
        assert_eq!(began.elapsed(), Duration::ZERO, "the first turn is at once");
        // a waiter that gives up (its handler timed out, say) takes no turn
        assert!(
            tokio::time::timeout(Duration::from_millis(100), limit.0.turn())
                .await
                .is_err()
        );
        limit.0.turn().await;
        assert_eq!(
            began.elapsed(),
            Duration::from_secs(1),
            "the next turn is the second's"
        );
        limit.0.turn().await;
        assert_eq!(began.elapsed(), Duration::from_secs(2));
    }
}
