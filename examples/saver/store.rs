//! The saver's PostgreSQL side: the schema (created at start), inserts keyed by message
//! id so that a redelivered message never adds a row, and the read side's query.

use deadpool_postgres::{Pool, Runtime};
use serde::Serialize;
use tokio_postgres::NoTls;

use crate::service::{Report, SensorData, UserReport};

/// Where the store is when `SAVER_DATABASE_URL` does not say.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A store failure: connecting, or a statement.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres pool settings: {0}")]
    Settings(#[from] deadpool_postgres::CreatePoolError),
    #[error("schema name `{0}`: letters, digits and `_` only")]
    SchemaName(String),
}

/// A pool on `url` whose sessions work in schema `schema` (tests use one each).
pub fn pool(url: &str, schema: &str) -> Result<Pool, StoreError> {
    if schema.is_empty()
        || !schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(StoreError::SchemaName(schema.to_string()));
    }
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(url.to_string());
    config.options = Some(format!("-c search_path={schema}"));
    Ok(config.create_pool(Some(Runtime::Tokio1), NoTls)?)
}

/// Creates the schema and tables unless they exist.
pub async fn migrate(pool: &Pool, schema: &str) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.report_events (
                 message_key text PRIMARY KEY,
                 id bigint NOT NULL,
                 text text NOT NULL,
                 received_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {schema}.user_reports (
                 message_key text PRIMARY KEY,
                 user_id bigint NOT NULL,
                 status text NOT NULL,
                 received_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {schema}.sensor_data (
                 message_key text NOT NULL,
                 seq integer NOT NULL,
                 sensor_id text NOT NULL,
                 ts timestamptz NOT NULL,
                 temperature double precision NOT NULL,
                 humidity double precision NOT NULL,
                 PRIMARY KEY (message_key, seq));"
        ))
        .await?;
    Ok(())
}

/// Inserts `report` once per `key`; whether it was new.
pub async fn insert_event(pool: &Pool, key: &str, report: &Report) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let id = i64::try_from(report.id).unwrap_or(i64::MAX);
    let rows = client
        .execute(
            "INSERT INTO report_events (message_key, id, text) VALUES ($1, $2, $3)
             ON CONFLICT (message_key) DO NOTHING",
            &[&key, &id, &report.text],
        )
        .await?;
    Ok(rows == 1)
}

/// Inserts `report` once per `key`; whether it was new.
pub async fn insert_user(pool: &Pool, key: &str, report: &UserReport) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let user = i64::try_from(report.user_id).unwrap_or(i64::MAX);
    let rows = client
        .execute(
            "INSERT INTO user_reports (message_key, user_id, status) VALUES ($1, $2, $3)
             ON CONFLICT (message_key) DO NOTHING",
            &[&key, &user, &report.status],
        )
        .await?;
    Ok(rows == 1)
}

/// Inserts a batch of readings in one transaction, once per `key`; how many were new.
pub async fn insert_readings(
    pool: &Pool,
    key: &str,
    readings: &[SensorData],
) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let statement = transaction
        .prepare(
            "INSERT INTO sensor_data (message_key, seq, sensor_id, ts, temperature, humidity)
             VALUES ($1, $2, $3, to_timestamp($4::bigint / 1000.0), $5, $6)
             ON CONFLICT (message_key, seq) DO NOTHING",
        )
        .await?;
    let mut new = 0;
    for (seq, reading) in readings.iter().enumerate() {
        let seq = i32::try_from(seq).unwrap_or(i32::MAX);
        new += transaction
            .execute(
                &statement,
                &[
                    &key,
                    &seq,
                    &reading.sensor_id,
                    &reading.ts_millis,
                    &reading.temperature,
                    &reading.humidity,
                ],
            )
            .await?;
    }
    transaction.commit().await?;
    Ok(new)
}

/// One sensor's averages over one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Average {
    pub sensor_id: String,
    /// The bucket's start, in seconds since the epoch.
    pub bucket: i64,
    pub temperature: f64,
    pub humidity: f64,
    pub readings: i64,
}

/// Averages per sensor per `bucket_secs` (plain SQL: the cqrs example's query side
/// without TimescaleDB).
pub async fn averages(pool: &Pool, bucket_secs: i64) -> Result<Vec<Average>, StoreError> {
    let client = pool.get().await?;
    let bucket = bucket_secs.max(1) as f64;
    let rows = client
        .query(
            "SELECT sensor_id,
                    (floor(extract(epoch FROM ts)::float8 / $1) * $1)::bigint AS bucket,
                    avg(temperature), avg(humidity), count(*)
             FROM sensor_data GROUP BY sensor_id, bucket ORDER BY sensor_id, bucket",
            &[&bucket],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Average {
            sensor_id: row.get(0),
            bucket: row.get(1),
            temperature: row.get(2),
            humidity: row.get(3),
            readings: row.get(4),
        })
        .collect())
}

/// Rows per table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    pub report_events: i64,
    pub user_reports: i64,
    pub sensor_data: i64,
}

pub async fn counts(pool: &Pool) -> Result<Counts, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM report_events), (SELECT count(*) FROM user_reports),
                    (SELECT count(*) FROM sensor_data)",
            &[],
        )
        .await?;
    Ok(Counts {
        report_events: row.get(0),
        user_reports: row.get(1),
        sensor_data: row.get(2),
    })
}
