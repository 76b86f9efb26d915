//! The realtime map's server: vehicle positions in over MQTT (HFP-like topics under
//! `/hfp/v2/journey/ongoing/vp/bus/...`, taken with a wildcard filter), out to browsers
//! over a WebSocket that sends each one only the vehicles inside the viewport it reported,
//! with geofence enter/leave notices, and a REST API (`/api/organization`,
//! `/api/organization/{id}`, `/api/trail/{vehicle}`).
//!
//!     TRANSPORT_BROKER__KIND=mqtt cargo run --example realtimemap    # Mosquitto on 127.0.0.1:1883
//!     cargo run --example realtimemap                                # or all in process
//!
//! It publishes its own synthetic feed (fixed layout, vehicles moving along looping
//! routes through two geofences) unless `--no-feed`; `publish` runs only the feed.
//! `REALTIMEMAP_HTTP` (default `127.0.0.1:8082`) is where it listens; the page at `/` draws
//! routes, geofences and vehicles with Leaflet, served from this example's
//! `web/node_modules` (`npm ci --prefix examples/realtimemap/web` first) or from
//! `REALTIMEMAP_LEAFLET`: no tiles, fonts or scripts from anywhere else.

mod model;
mod service;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Json, Router};

use service::MapService;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let app = transport::App::from_env()?;
    if args.first().map(String::as_str) == Some("publish") {
        let running = app.select(|_| false).start().await?;
        let feed = tokio::spawn(feed(running.publisher().clone()));
        let result = running.run().await;
        feed.abort();
        return Ok(result?);
    }
    let feed_too = !args.iter().any(|a| a == "--no-feed");
    let ws = service::websocket(app.config().websocket.clone())?;
    let map = Arc::new(MapService::new(ws.clone()));
    let app = app.service_arc(Arc::clone(&map));
    if app.run_command_from_args()? {
        return Ok(());
    }
    // listening for SIGINT / SIGTERM from before startup, so a signal during it is not lost
    let signals = Signals::listen()?;
    let running = app.start().await?;
    let router = api(map).merge(page()).merge(ws.router());
    let address = std::env::var("REALTIMEMAP_HTTP").unwrap_or_else(|_| "127.0.0.1:8082".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("realtimemap listening on http://{}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let http = tokio::spawn({
        let stop = stop.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future()
    });
    let feed = feed_too.then(|| tokio::spawn(feed(running.publisher().clone())));
    signals.received().await;
    tracing::info!("signal received; shutting down");
    running.shutdown().await?;
    if let Some(feed) = feed {
        feed.abort();
    }
    ws.shutdown().await;
    stop.cancel();
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}

/// Publishes every vehicle's position four times a second, until aborted; the clock runs
/// `REALTIMEMAP_SPEEDUP` times faster (default 1: a lap takes one to two minutes).
async fn feed(publisher: transport::Publisher) {
    let vehicles = model::vehicles();
    let speedup: f64 = std::env::var("REALTIMEMAP_SPEEDUP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let epoch_millis = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let start = epoch_millis();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = start + ((epoch_millis() - start) as f64 * speedup) as i64;
        for vehicle in &vehicles {
            if let Err(error) = publisher
                .publish(&vehicle.topic(), &vehicle.position(now))
                .await
            {
                tracing::warn!(%error, "feed: publish failed");
            }
        }
    }
}

/// The REST API.
fn api(map: Arc<MapService>) -> Router {
    async fn organizations(State(map): State<Arc<MapService>>) -> Json<Vec<serde_json::Value>> {
        Json(map.organizations())
    }
    async fn organization(
        State(map): State<Arc<MapService>>,
        Path(id): Path<u32>,
    ) -> Result<Json<serde_json::Value>, StatusCode> {
        map.organization(id).map(Json).ok_or(StatusCode::NOT_FOUND)
    }
    async fn trail(
        State(map): State<Arc<MapService>>,
        Path(vehicle): Path<u32>,
    ) -> Result<Json<Vec<(f64, f64, i64)>>, StatusCode> {
        map.trail(vehicle).map(Json).ok_or(StatusCode::NOT_FOUND)
    }
    Router::new()
        .route("/api/organization", axum::routing::get(organizations))
        .route("/api/organization/{id}", axum::routing::get(organization))
        .route("/api/trail/{vehicle}", axum::routing::get(trail))
        .with_state(map)
}

/// Where Leaflet's `dist` directory is: `REALTIMEMAP_LEAFLET`, else this example's
/// `web/node_modules`.
fn leaflet_dir() -> std::path::PathBuf {
    std::env::var_os("REALTIMEMAP_LEAFLET")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("realtimemap/web/node_modules/leaflet/dist")
        })
}

/// The page (`/`), its layout (`/api/layout`: routes and geofences to draw) and Leaflet
/// (`/leaflet/leaflet.js`, `/leaflet/leaflet.css`).
fn page() -> Router {
    let leaflet = leaflet_dir();
    if !leaflet.join("leaflet.js").exists() {
        tracing::warn!(
            directory = %leaflet.display(),
            "Leaflet not found: the page cannot draw the map (npm ci --prefix examples/realtimemap/web, or set REALTIMEMAP_LEAFLET)"
        );
    }
    async fn index() -> axum::response::Html<&'static str> {
        axum::response::Html(include_str!("index.html"))
    }
    async fn layout() -> Json<serde_json::Value> {
        let routes: Vec<_> = model::ROUTES
            .iter()
            .map(|route| serde_json::json!({ "id": route.id, "outline": route.outline(96) }))
            .collect();
        Json(serde_json::json!({ "routes": routes, "geofences": model::GEOFENCES }))
    }
    async fn asset(
        State(leaflet): State<Arc<std::path::PathBuf>>,
        Path(file): Path<String>,
    ) -> Result<([(axum::http::header::HeaderName, &'static str); 1], Vec<u8>), StatusCode> {
        let kind = match file.as_str() {
            "leaflet.js" => "text/javascript",
            "leaflet.css" => "text/css",
            _ => return Err(StatusCode::NOT_FOUND),
        };
        let body = tokio::fs::read(leaflet.join(&file))
            .await
            .map_err(|_| StatusCode::NOT_FOUND)?;
        Ok(([(axum::http::header::CONTENT_TYPE, kind)], body))
    }
    Router::new()
        .route("/", axum::routing::get(index))
        .route("/api/layout", axum::routing::get(layout))
        .route("/leaflet/{file}", axum::routing::get(asset))
        .with_state(Arc::new(leaflet))
}

/// SIGINT and SIGTERM, listened for from creation on.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn received(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
