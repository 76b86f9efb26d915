//! Liveness and readiness: [`Health`], what an orchestrator's probes ask. Ready means
//! started, every subscription bound (none ended by its backend and waiting to be made
//! again) and the backend's client connected where it can tell; not ready while starting,
//! resubscribing, disconnected, draining or stopped. Live means the App has not stopped.
//! With the `health` feature, [`Health::router`] serves both as axum routes
//! (`/health/live`, `/health/ready`), also on the metrics endpoint when there is one.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::Serialize;

use crate::backend::Backend;

/// An App's health, from before it starts until after it stops (cheap to clone).
#[derive(Clone, Default)]
pub struct Health(Arc<Inner>);

#[derive(Default)]
struct Inner {
    phase: AtomicU8,
    backend: OnceLock<Arc<dyn Backend>>,
    subscriptions: Mutex<Vec<Arc<Bound>>>,
}

/// The App's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Phase {
    /// Not started yet, or starting.
    Starting = 0,
    /// Started: subscriptions consuming.
    Running = 1,
    /// Shutdown began: no new deliveries, in-flight ones finishing.
    Draining = 2,
    /// Shut down.
    Stopped = 3,
}

/// One subscription's binding, flipped by its dispatcher.
pub(crate) struct Bound {
    subscriber: &'static str,
    topic: String,
    bound: AtomicBool,
}

impl Bound {
    /// The backend ended the subscription (`false`), or it was made again (`true`).
    pub fn set(&self, bound: bool) {
        self.bound.store(bound, Ordering::Relaxed);
    }
}

/// What [`Health::report`] says (the probes' JSON body).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The App has not stopped.
    pub live: bool,
    /// Running, every subscription bound, the backend connected.
    pub ready: bool,
    /// Where the App is in its life.
    pub phase: Phase,
    /// The backend (`None` before the App connected it).
    pub backend: Option<BackendReport>,
    /// Every subscription.
    pub subscriptions: Vec<SubscriptionReport>,
}

/// The backend's part of a [`Report`].
#[derive(Clone, Debug, Serialize)]
pub struct BackendReport {
    /// `broker.kind`.
    pub kind: &'static str,
    /// Its client is connected (where it can tell; else `true`).
    pub connected: bool,
}

/// A subscription's part of a [`Report`].
#[derive(Clone, Debug, Serialize)]
pub struct SubscriptionReport {
    /// The subscriber's name.
    pub subscriber: &'static str,
    /// Its topic (or MQTT filter).
    pub topic: String,
    /// Subscribed now (not ended by the backend and waiting to be made again).
    pub bound: bool,
}

impl Health {
    /// The App's phase now.
    pub fn phase(&self) -> Phase {
        match self.0.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Stopped,
        }
    }

    /// Live: the App has not stopped.
    pub fn is_live(&self) -> bool {
        self.phase() != Phase::Stopped
    }

    /// Ready: running, every subscription bound, the backend connected.
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Running
            && self
                .0
                .backend
                .get()
                .is_none_or(|backend| backend.connected())
            && self
                .subscriptions()
                .iter()
                .all(|s| s.bound.load(Ordering::Relaxed))
    }

    /// Everything the probes look at.
    pub fn report(&self) -> Report {
        let subscriptions = self
            .subscriptions()
            .iter()
            .map(|s| SubscriptionReport {
                subscriber: s.subscriber,
                topic: s.topic.clone(),
                bound: s.bound.load(Ordering::Relaxed),
            })
            .collect();
        Report {
            live: self.is_live(),
            ready: self.is_ready(),
            phase: self.phase(),
            backend: self.0.backend.get().map(|backend| BackendReport {
                kind: backend.kind(),
                connected: backend.connected(),
            }),
            subscriptions,
        }
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Bound>>> {
        self.0
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.0.phase.store(phase as u8, Ordering::Release);
    }

    pub(crate) fn set_backend(&self, backend: &Arc<dyn Backend>) {
        let _ = self.0.backend.set(Arc::clone(backend));
    }

    /// A subscription made (bound) at start, for its dispatcher to flip.
    pub(crate) fn subscribed(&self, subscriber: &'static str, topic: &str) -> Arc<Bound> {
        let bound = Arc::new(Bound {
            subscriber,
            topic: topic.to_string(),
            bound: AtomicBool::new(true),
        });
        self.subscriptions().push(Arc::clone(&bound));
        bound
    }

    /// `GET /health/live` and `GET /health/ready`: 200 when live / ready, else 503, with
    /// the [`Report`] as JSON either way.
    #[cfg(feature = "health")]
    pub fn router(&self) -> axum::Router {
        use axum::http::StatusCode;
        use axum::http::header::CONTENT_TYPE;
        use axum::response::IntoResponse;
        fn answer(health: &Health, ok: fn(&Report) -> bool) -> axum::response::Response {
            let report = health.report();
            let status = if ok(&report) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string(&report).unwrap_or_default();
            (status, [(CONTENT_TYPE, "application/json")], body).into_response()
        }
        let live = self.clone();
        let ready = self.clone();
        axum::Router::new()
            .route(
                "/health/live",
                axum::routing::get(move || {
                    let health = live.clone();
                    async move { answer(&health, |r| r.live) }
                }),
            )
            .route(
                "/health/ready",
                axum::routing::get(move || {
                    let health = ready.clone();
                    async move { answer(&health, |r| r.ready) }
                }),
            )
    }
}
