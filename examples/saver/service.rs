//! The `SaverService`: the cqrs example's write side. Its state is a PostgreSQL pool; one
//! subscriber per topic writes what it receives, keyed by the message's id, so a
//! redelivery (a consumer killed before its ack) never adds a row.

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use transport::prelude::*;

use crate::store;

/// An event report (`report.event`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub id: u64,
    pub text: String,
}

/// A user's status report (`report.user`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserReport {
    pub user_id: u64,
    pub status: String,
}

/// One sensor reading; `sensor.batch` carries them in batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SensorData {
    pub sensor_id: String,
    /// When it was read, in milliseconds since the epoch.
    pub ts_millis: i64,
    pub temperature: f64,
    pub humidity: f64,
}

/// The topics, declared once: the publisher mode and the subscribers share them.
pub const EVENTS: Topic<Report> = Topic::new("report.event");
pub const USERS: Topic<UserReport> = Topic::new("report.user");
pub const READINGS: Topic<Vec<SensorData>> = Topic::new("sensor.batch");

pub struct SaverService {
    pool: Pool,
}

impl SaverService {
    pub fn new(pool: Pool) -> Self {
        SaverService { pool }
    }
}

#[transport::service]
impl SaverService {
    #[subscriber(topic = EVENTS, group = "saver")]
    async fn save_event(&self, report: Report, ctx: &Context) -> Result<(), Error> {
        let new = store::insert_event(&self.pool, &key(ctx), &report)
            .await
            .map_err(Error::handler)?;
        tracing::info!(
            id = report.id,
            new,
            attempt = ctx.attempt(),
            "event report saved"
        );
        Ok(())
    }

    #[subscriber(topic = USERS, group = "saver")]
    async fn save_user(&self, report: UserReport, ctx: &Context) -> Result<(), Error> {
        let new = store::insert_user(&self.pool, &key(ctx), &report)
            .await
            .map_err(Error::handler)?;
        tracing::info!(user = report.user_id, new, "user report saved");
        Ok(())
    }

    #[subscriber(topic = READINGS, group = "saver")]
    async fn save_readings(&self, readings: Vec<SensorData>, ctx: &Context) -> Result<(), Error> {
        let new = store::insert_readings(&self.pool, &key(ctx), &readings)
            .await
            .map_err(Error::handler)?;
        tracing::info!(readings = readings.len(), new, "sensor readings saved");
        Ok(())
    }
}

/// What makes a row unique: the message's id (every message this framework publishes has
/// one), else a hash of the payload (a raw producer's message without an id).
fn key(ctx: &Context) -> String {
    match ctx.message_id() {
        Some(id) => id.to_string(),
        None => {
            // FNV-1a: stable across builds, unlike the standard hasher
            let hash = ctx
                .payload()
                .iter()
                .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                    (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
                });
            format!("payload:{hash:016x}")
        }
    }
}
