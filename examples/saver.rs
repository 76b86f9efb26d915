//! A long-running service as you would deploy it: the `SaverService` of the design notes,
//! consuming `report.event` until SIGINT / SIGTERM, then draining and exiting 0.
//!
//!     cargo run --example saver                      # the embedded broker: waits for reports
//!     TRANSPORT_BROKER__KIND=redis-streams cargo run --example saver
//!     redis-cli XADD report.event '*' payload '{"id":1,"text":"disk 91% full"}'
//!     cargo run --example saver -- list              # what it subscribes to
//!     cargo run --example saver -- check             # validate config and bindings

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use transport::prelude::*;

/// A report, as producers publish it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub id: u64,
    pub text: String,
}

/// Keeps the reports it receives (a real one would write to a database).
#[derive(Default)]
pub struct SaverService {
    saved: Mutex<Vec<Report>>,
}

impl SaverService {
    /// How many reports were saved.
    pub fn saved(&self) -> usize {
        self.saved.lock().map_or(0, |saved| saved.len())
    }
}

#[transport::service]
impl SaverService {
    #[subscriber(topic = "report.event", group = "saver", codec = "json")]
    async fn save(&self, report: Report, ctx: &Context) -> Result<(), Error> {
        tracing::info!(id = report.id, attempt = ctx.attempt(), "saving report");
        let mut saved = self
            .saved
            .lock()
            .map_err(|_| Error::msg("saver state poisoned"))?;
        saved.push(report);
        tracing::info!(total = saved.len(), "saved");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), transport::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // the broker is whatever transport.toml / TRANSPORT_* selects; memory when none
    let service = std::sync::Arc::new(SaverService::default());
    transport::App::from_env()?
        .service_arc(std::sync::Arc::clone(&service))
        .run()
        .await?;
    tracing::info!(saved = service.saved(), "stopped");
    Ok(())
}
