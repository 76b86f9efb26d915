//! The report saver, as you would deploy it: the cqrs example's write side and the NSQ
//! article's `SaverService`. It consumes event reports, user reports and batches of sensor
//! readings into PostgreSQL (the schema is created at start; a redelivered message never
//! adds a row), serves the read side over HTTP, and drains and exits 0 on SIGINT / SIGTERM.
//! `publish` is the producer.
//!
//!     cargo run --example saver                                   # memory broker, PostgreSQL on 127.0.0.1:5432/test
//!     curl 'http://127.0.0.1:8081/averages?bucket=60'             # the read side
//!     TRANSPORT_BROKER__KIND=nats cargo run --example saver       # any broker, by configuration
//!     TRANSPORT_BROKER__KIND=nats cargo run --example saver -- publish --count 100 --rate 50
//!     cargo run --example saver -- list                           # what it subscribes to
//!
//! `SAVER_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`), `SAVER_SCHEMA`
//! (default `saver`) and `SAVER_HTTP` (default `127.0.0.1:8081`) say where the rest is.

mod service;
mod store;

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use serde::Deserialize;

use service::{EVENTS, READINGS, Report, SaverService, SensorData, USERS, UserReport};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("publish") {
        return publish(&args[1..]).await;
    }
    let app = transport::App::from_env()?;
    let schema = env_or("SAVER_SCHEMA", "saver");
    let pool = store::pool(&env_or("SAVER_DATABASE_URL", store::DEFAULT_URL), &schema)?;
    // `list`, `asyncapi`, `check` need no database; the service instance is still given
    let app = app.service(SaverService::new(pool.clone()));
    if app.run_command_from_args()? {
        return Ok(());
    }
    store::migrate(&pool, &schema).await?;
    let listener = tokio::net::TcpListener::bind(env_or("SAVER_HTTP", "127.0.0.1:8081")).await?;
    tracing::info!(address = %listener.local_addr()?, "read side listening");
    let stop = tokio_util::sync::CancellationToken::new();
    let read_side = tokio::spawn({
        let stop = stop.clone();
        axum::serve(listener, read_side(pool))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future()
    });
    // App::run listens for SIGINT / SIGTERM from before startup, so a signal during it
    // is not lost; it consumes until one, then drains
    let outcome = app.run().await;
    stop.cancel();
    let _ = read_side.await;
    outcome?;
    tracing::info!("stopped");
    Ok(())
}

/// The read side: `/averages?bucket=SECONDS` (per sensor per time bucket) and `/counts`.
fn read_side(pool: deadpool_postgres::Pool) -> Router {
    #[derive(Deserialize)]
    struct Bucket {
        bucket: Option<i64>,
    }
    async fn averages(
        State(pool): State<deadpool_postgres::Pool>,
        Query(query): Query<Bucket>,
    ) -> Result<Json<Vec<store::Average>>, (StatusCode, String)> {
        store::averages(&pool, query.bucket.unwrap_or(60))
            .await
            .map(Json)
            .map_err(unavailable)
    }
    async fn counts(
        State(pool): State<deadpool_postgres::Pool>,
    ) -> Result<Json<store::Counts>, (StatusCode, String)> {
        store::counts(&pool).await.map(Json).map_err(unavailable)
    }
    fn unavailable(error: store::StoreError) -> (StatusCode, String) {
        tracing::error!(%error, "read side");
        (StatusCode::SERVICE_UNAVAILABLE, error.to_string())
    }
    Router::new()
        .route("/averages", axum::routing::get(averages))
        .route("/counts", axum::routing::get(counts))
        .with_state(pool)
}

/// `publish [--count N] [--rate PER_SECOND]`: N event reports, N user reports and N
/// batches of four sensor readings, paced at the rate (unpaced without one).
async fn publish(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let mut count = 10u64;
    let mut rate = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--count" => count = value.parse()?,
            "--rate" => rate = Some(value.parse::<f64>()?),
            other => return Err(format!("unknown option {other} (--count N, --rate R)").into()),
        }
    }
    let running = transport::App::from_env()?
        .select(|_| false)
        .start()
        .await?;
    let publisher = running.publisher().clone();
    let pause = rate
        .filter(|rate| *rate > 0.0)
        .map(|rate| Duration::from_secs_f64(1.0 / rate));
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for n in 0..count {
        publisher
            .send(
                &EVENTS,
                &Report {
                    id: n,
                    text: format!("report {n}"),
                },
            )
            .await?;
        publisher
            .send(
                &USERS,
                &UserReport {
                    user_id: n % 7,
                    status: if n % 3 == 0 { "away" } else { "online" }.to_string(),
                },
            )
            .await?;
        let readings: Vec<SensorData> = (0..4)
            .map(|sensor| SensorData {
                sensor_id: format!("sensor-{sensor}"),
                ts_millis: start + (n as i64) * 1000,
                temperature: 20.0 + f64::from(sensor) + (n % 10) as f64 / 10.0,
                humidity: 40.0 + f64::from(sensor),
            })
            .collect();
        publisher.send(&READINGS, &readings).await?;
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    tracing::info!(count, "published");
    running.shutdown().await?;
    Ok(())
}
