//! The Prometheus endpoint (feature `prometheus`): the recorder the App installs when
//! `[metrics] address` is set, and the HTTP server answering `GET /metrics` there in the
//! Prometheus text format, and the App's health probes (`/health/live`, `/health/ready`). [`metrics_router`] gives the same route to mount in an axum
//! application of one's own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::metrics::MetricsError;

/// The upper bounds of the duration histograms' buckets, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder's histograms are compacted.
const UPKEEP: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Result<PrometheusHandle, ()>> = OnceLock::new();

/// A Prometheus recorder's builder as the App configures its own: the `_seconds`
/// metrics as histograms with buckets from 0.5 ms to 10 s (cheap to record and to scrape;
/// without buckets they would be summaries, whose quantiles cost far more per sample).
pub fn prometheus_builder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new();
    match builder.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS) {
        Ok(builder) => builder,
        // (only refused for an empty list of buckets)
        Err(_) => PrometheusBuilder::new(),
    }
}

/// The process's Prometheus recorder, installed as the global `metrics` recorder on the
/// first call (later calls, from other Apps in the process, share it).
pub fn prometheus() -> Result<PrometheusHandle, MetricsError> {
    RECORDER
        .get_or_init(|| prometheus_builder().install_recorder().map_err(|_| ()))
        .clone()
        .map_err(|()| MetricsError::RecorderTaken)
}

/// `GET /metrics`: what the process's Prometheus recorder holds (installing it if no
/// recorder is installed yet).
pub fn metrics_router() -> Result<axum::Router, MetricsError> {
    let handle = prometheus()?;
    Ok(axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    ))
}

/// Binds `address` and returns where it listens and the server, which runs until
/// `shutdown` (keeping the recorder's histograms compact meanwhile).
pub(crate) async fn serve(
    address: SocketAddr,
    health: crate::Health,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send + 'static), MetricsError> {
    let router = metrics_router()?.merge(health.router());
    let handle = prometheus()?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::Bind { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { address, source })?;
    let serving = async move {
        let upkeep = async {
            let mut every = tokio::time::interval(UPKEEP);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        };
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        tokio::select! {
            served = server => {
                if let Err(error) = served {
                    tracing::error!(%error, "metrics endpoint stopped");
                }
            }
            () = upkeep => {}
        }
    };
    Ok((bound, serving))
}
