//! What the framework measures, through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): per subscriber, every delivery received, handled, failed, retried,
//! dead-lettered or undecodable, the handler's duration and what is in flight; per
//! backend, each publish's duration and failures, reconnections, and messages an
//! at-most-once backend dropped for a subscriber too slow. The application's
//! recorder receives them (the `prometheus` feature brings one, served on `[metrics]
//! address`); without a recorder, or without the feature, recording costs next to nothing
//! (durations a recorder discards are not even timed).
//!
//! Handles are registered once, when the App starts: install a recorder before
//! [`App::start`](crate::App::start).

/// The metric names (a `transport_` prefix, Prometheus' conventions: `_total` counters,
/// `_seconds` histograms) and their labels.
pub mod names {
    /// Deliveries taken from the broker (each attempt counts). Labels: `subscriber`,
    /// `topic`, `group` (as every subscriber metric).
    pub const RECEIVED: &str = "transport_received_total";
    /// Deliveries whose handler succeeded (and were acknowledged).
    pub const HANDLED: &str = "transport_handled_total";
    /// Handler runs that failed. Label `kind`: `handler` (an error), `panic`, `timeout`.
    pub const FAILED: &str = "transport_failed_total";
    /// Failed deliveries that will run again (in place, or through the broker).
    pub const RETRIED: &str = "transport_retried_total";
    /// Messages published to the dead-letter topic. Label `reason`: `handler`, `panic`,
    /// `timeout`, `decode`, `malformed`, `too-large`.
    pub const DEAD_LETTERED: &str = "transport_dead_lettered_total";
    /// Payloads the subscriber's codec could not decode (dead-lettered, never retried).
    pub const DECODE_ERRORS: &str = "transport_decode_errors_total";
    /// How long each handler run took, decode included.
    pub const HANDLER_DURATION: &str = "transport_handler_duration_seconds";
    /// Deliveries being handled now.
    pub const IN_FLIGHT: &str = "transport_in_flight";
    /// How long each publish took, until the broker accepted it. Label `backend`.
    pub const PUBLISH_DURATION: &str = "transport_publish_duration_seconds";
    /// Publishes that failed (the broker refused, was unreachable, or the message was
    /// invalid). Label `backend`.
    pub const PUBLISH_ERRORS: &str = "transport_publish_errors_total";
    /// Subscriptions subscribed again after the backend ended them (a lost connection).
    /// Labels as the subscriber metrics.
    pub const RESUBSCRIBED: &str = "transport_resubscribed_total";
    /// Connections a backend's client re-established. Label `backend`.
    pub const RECONNECTS: &str = "transport_backend_reconnects_total";
    /// Messages an at-most-once backend (NATS core, Redis pub/sub) dropped because a
    /// subscriber could not keep up. Label `backend`.
    pub const DROPPED: &str = "transport_dropped_total";
}

/// Why the metrics endpoint (`[metrics] address`) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// `[metrics] address` is set, but the `prometheus` feature is not enabled.
    #[error("[metrics] address is set, but transport was built without its `prometheus` feature")]
    NoExporter,
    /// Another metrics recorder was installed first (one per process).
    #[error(
        "a metrics recorder other than transport's was already installed; unset [metrics] address and serve that recorder's metrics yourself"
    )]
    RecorderTaken,
    /// The address could not be bound.
    #[error("cannot listen on {address} for metrics: {source}")]
    Bind {
        /// The configured address.
        address: std::net::SocketAddr,
        /// Why it could not be bound.
        source: std::io::Error,
    },
}

/// Why a handler run failed, for [`names::FAILED`].
#[derive(Clone, Copy)]
pub(crate) enum FailureKind {
    Handler,
    Panic,
    Timeout,
}

/// Why a message was dead-lettered, for [`names::DEAD_LETTERED`] (the `reason` label is
/// the dead letter's own `kind`).
#[cfg(feature = "metrics")]
const DEAD_LETTER_REASONS: [&str; 6] = [
    "handler",
    "panic",
    "timeout",
    "decode",
    "malformed",
    "too-large",
];

/// One subscriber's handles.
#[derive(Clone)]
pub(crate) struct SubscriberMetrics {
    #[cfg(feature = "metrics")]
    handles: std::sync::Arc<SubscriberHandles>,
}

#[cfg(feature = "metrics")]
struct SubscriberHandles {
    received: metrics::Counter,
    handled: metrics::Counter,
    failed: [metrics::Counter; 3],
    retried: metrics::Counter,
    dead_lettered: [metrics::Counter; DEAD_LETTER_REASONS.len()],
    decode_errors: metrics::Counter,
    duration: Timer,
    in_flight: metrics::Gauge,
    resubscribed: metrics::Counter,
}

/// When a handler run or publish started: nothing without the feature, or where the
/// recorder discards durations.
pub(crate) struct Started {
    #[cfg(feature = "metrics")]
    at: Option<quanta::Instant>,
}

/// The clock durations are read from: the CPU's time-stamp counter where it is reliable
/// (calibrated once), a few instructions a read where the system clock costs a hundred.
#[cfg(feature = "metrics")]
fn clock() -> &'static quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// A duration histogram that stops reading the clock once it is seen to discard what it
/// is given: without a recorder (or with one that ignores this metric) the handle is a
/// no-op, and the two clock reads per run would be spent on nothing.
#[cfg(feature = "metrics")]
struct Timer {
    histogram: metrics::Histogram,
    /// Set when a recorded duration was not read: the handle is a no-op (handles do not
    /// change once registered).
    discards: std::sync::atomic::AtomicBool,
}

#[cfg(feature = "metrics")]
impl Timer {
    fn new(histogram: metrics::Histogram) -> Self {
        Timer {
            histogram,
            discards: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[inline]
    fn start(&self) -> Started {
        let discards = self.discards.load(std::sync::atomic::Ordering::Relaxed);
        Started {
            at: (!discards).then(|| clock().now()),
        }
    }

    #[inline]
    fn record(&self, started: Started) {
        let Some(at) = started.at else { return };
        let read = std::cell::Cell::new(false);
        self.histogram.record(Elapsed { at, read: &read });
        if !read.get() {
            self.discards
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The time since `at`, read only when a histogram takes the value (a no-op handle never
/// converts it), and noted in `read`.
#[cfg(feature = "metrics")]
struct Elapsed<'a> {
    at: quanta::Instant,
    read: &'a std::cell::Cell<bool>,
}

#[cfg(feature = "metrics")]
impl metrics::IntoF64 for Elapsed<'_> {
    fn into_f64(self) -> f64 {
        self.read.set(true);
        clock().now().duration_since(self.at).as_secs_f64()
    }
}

#[cfg(not(feature = "metrics"))]
impl Started {
    #[inline]
    fn now() -> Self {
        Started {}
    }
}

impl SubscriberMetrics {
    /// Registers the subscriber's handles with the recorder installed now.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn new(subscriber: &'static str, topic: &str, group: Option<&str>) -> Self {
        #[cfg(feature = "metrics")]
        {
            let labels = [
                ("subscriber", subscriber.to_string()),
                ("topic", topic.to_string()),
                ("group", group.unwrap_or_default().to_string()),
            ];
            let with = |extra: (&'static str, &'static str)| {
                let mut all = labels.to_vec();
                all.push((extra.0, extra.1.to_string()));
                all
            };
            let handles = SubscriberHandles {
                received: metrics::counter!(names::RECEIVED, &labels),
                handled: metrics::counter!(names::HANDLED, &labels),
                failed: ["handler", "panic", "timeout"]
                    .map(|kind| metrics::counter!(names::FAILED, &with(("kind", kind)))),
                retried: metrics::counter!(names::RETRIED, &labels),
                dead_lettered: DEAD_LETTER_REASONS.map(|reason| {
                    metrics::counter!(names::DEAD_LETTERED, &with(("reason", reason)))
                }),
                decode_errors: metrics::counter!(names::DECODE_ERRORS, &labels),
                duration: Timer::new(metrics::histogram!(names::HANDLER_DURATION, &labels)),
                in_flight: metrics::gauge!(names::IN_FLIGHT, &labels),
                resubscribed: metrics::counter!(names::RESUBSCRIBED, &labels),
            };
            SubscriberMetrics {
                handles: std::sync::Arc::new(handles),
            }
        }
        #[cfg(not(feature = "metrics"))]
        SubscriberMetrics {}
    }

    /// A delivery arrived and is being handled: counted, and in flight until
    /// [`finished`](Self::finished).
    #[inline]
    pub fn received(&self) {
        #[cfg(feature = "metrics")]
        {
            self.handles.received.increment(1);
            self.handles.in_flight.increment(1.0);
        }
    }

    /// The delivery is settled (whatever the outcome).
    #[inline]
    pub fn finished(&self) {
        #[cfg(feature = "metrics")]
        self.handles.in_flight.decrement(1.0);
    }

    /// A handler run begins.
    #[inline]
    pub fn start(&self) -> Started {
        #[cfg(feature = "metrics")]
        return self.handles.duration.start();
        #[cfg(not(feature = "metrics"))]
        Started::now()
    }

    /// A handler run ended after `started`.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn ran(&self, started: Started) {
        #[cfg(feature = "metrics")]
        self.handles.duration.record(started);
    }

    #[inline]
    pub fn handled(&self) {
        #[cfg(feature = "metrics")]
        self.handles.handled.increment(1);
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn failed(&self, kind: FailureKind) {
        #[cfg(feature = "metrics")]
        self.handles.failed[kind as usize].increment(1);
    }

    pub fn retried(&self) {
        #[cfg(feature = "metrics")]
        self.handles.retried.increment(1);
    }

    pub fn decode_error(&self) {
        #[cfg(feature = "metrics")]
        self.handles.decode_errors.increment(1);
    }

    /// A dead letter was published for reason `kind` (a dead letter's `kind`).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn dead_lettered(&self, kind: &str) {
        #[cfg(feature = "metrics")]
        if let Some(n) = DEAD_LETTER_REASONS
            .iter()
            .position(|reason| *reason == kind)
        {
            self.handles.dead_lettered[n].increment(1);
        }
    }

    pub fn resubscribed(&self) {
        #[cfg(feature = "metrics")]
        self.handles.resubscribed.increment(1);
    }
}

/// A backend's publish handles.
#[derive(Clone)]
pub(crate) struct PublishMetrics {
    #[cfg(feature = "metrics")]
    handles: std::sync::Arc<(Timer, metrics::Counter)>,
}

impl PublishMetrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn new(backend: &'static str) -> Self {
        PublishMetrics {
            #[cfg(feature = "metrics")]
            handles: std::sync::Arc::new((
                Timer::new(metrics::histogram!(names::PUBLISH_DURATION, "backend" => backend)),
                metrics::counter!(names::PUBLISH_ERRORS, "backend" => backend),
            )),
        }
    }

    #[inline]
    pub fn start(&self) -> Started {
        #[cfg(feature = "metrics")]
        return self.handles.0.start();
        #[cfg(not(feature = "metrics"))]
        Started::now()
    }

    /// A publish begun at `started` ended; `ok` whether the broker accepted it.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn published(&self, started: Started, ok: bool) {
        #[cfg(feature = "metrics")]
        {
            self.handles.0.record(started);
            if !ok {
                self.handles.1.increment(1);
            }
        }
    }
}

/// A backend's client connected again after losing its connection.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
#[cfg_attr(not(any(feature = "nats", feature = "redis")), allow(dead_code))]
pub(crate) fn reconnected(backend: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::RECONNECTS, "backend" => backend).increment(1);
}

/// A subscriber of `backend` could not keep up: one message dropped. (The handle is
/// looked up at each drop, as `reconnected`'s: a backend connects before the App installs
/// its recorder, so a handle taken then would count nowhere.)
#[cfg(any(feature = "nats", feature = "redis"))]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn dropped(backend: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::DROPPED, "backend" => backend).increment(1);
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A histogram keeping what it is given.
    #[derive(Default)]
    struct Kept(Mutex<Vec<f64>>);

    impl metrics::HistogramFn for Kept {
        fn record(&self, value: f64) {
            self.0.lock().unwrap().push(value);
        }
    }

    #[test]
    fn a_recording_histogram_gets_every_duration() {
        let kept = Arc::new(Kept::default());
        let timer = Timer::new(metrics::Histogram::from_arc(Arc::clone(&kept)));
        for _ in 0..3 {
            let started = timer.start();
            assert!(started.at.is_some());
            std::thread::sleep(std::time::Duration::from_millis(2));
            timer.record(started);
        }
        let kept = kept.0.lock().unwrap();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|seconds| *seconds >= 0.002), "{kept:?}");
    }

    #[test]
    fn a_discarding_histogram_stops_the_clock_reads() {
        let timer = Timer::new(metrics::Histogram::noop());
        let first = timer.start();
        assert!(
            first.at.is_some(),
            "not known to discard before the first run"
        );
        timer.record(first);
        assert!(timer.start().at.is_none(), "the clock is still read");
    }
}
