//! A small sensor service on the embedded in-memory broker: nothing to install.
//!
//! A producer publishes hygrothermograph readings of two rooms; an annotated
//! `Aggregator` service keeps a running average per room and replies with a summary;
//! a `Display` service prints each summary. After the last summary the App drains and
//! the program exits 0.
//!
//!     cargo run --example quickstart
//!     cargo run --example quickstart -- list       # or asyncapi, check: see the README
//!
//! The broker comes from configuration (`transport.toml`, `TRANSPORT_*`), memory when
//! none is given.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use transport::prelude::*;

/// The topics, declared once: producers and consumers both use these constants, so a
/// payload type mismatch is a compile error on either side.
mod topics {
    use serde::{Deserialize, Serialize};
    use transport::Topic;

    /// One reading of a hygrothermograph.
    // `JsonSchema` puts the payload's schema in `cargo run --example quickstart -- asyncapi`
    #[derive(Clone, Debug, Serialize, Deserialize, transport::schemars::JsonSchema)]
    #[schemars(crate = "transport::schemars")]
    pub struct Hygrothermograph {
        pub room: String,
        pub humidity: f64,
        pub temperature: f64,
    }

    /// Running averages of one room.
    #[derive(Clone, Debug, Serialize, Deserialize, transport::schemars::JsonSchema)]
    #[schemars(crate = "transport::schemars")]
    pub struct Summary {
        pub room: String,
        pub readings: u32,
        pub mean_humidity: f64,
        pub mean_temperature: f64,
    }

    pub const READINGS: Topic<Hygrothermograph> = Topic::new("sensor.readings");
    pub const SUMMARIES: Topic<Summary> = Topic::new("sensor.summaries");
}

use topics::{Hygrothermograph, READINGS, SUMMARIES, Summary};

#[derive(Default)]
struct Totals {
    readings: u32,
    humidity: f64,
    temperature: f64,
}

/// Aggregates readings per room.
#[derive(Default)]
struct Aggregator {
    rooms: Mutex<HashMap<String, Totals>>,
}

#[transport::service]
impl Aggregator {
    /// Each reading updates its room's totals; the summary is published to `SUMMARIES`.
    #[subscriber(topic = READINGS, group = "aggregator", reply = SUMMARIES)]
    async fn aggregate(&self, reading: Hygrothermograph, ctx: &Context) -> Result<Summary, Error> {
        if !(-50.0..=80.0).contains(&reading.temperature) {
            return Err(Error::msg(format!(
                "implausible temperature {} in {}",
                reading.temperature, reading.room
            )));
        }
        let mut rooms = self
            .rooms
            .lock()
            .map_err(|_| Error::msg("aggregator state poisoned"))?;
        let totals = rooms.entry(reading.room.clone()).or_default();
        totals.readings += 1;
        totals.humidity += reading.humidity;
        totals.temperature += reading.temperature;
        println!(
            "aggregator: {} reading #{} from {} (attempt {})",
            ctx.topic(),
            totals.readings,
            reading.room,
            ctx.attempt()
        );
        Ok(Summary {
            room: reading.room,
            readings: totals.readings,
            mean_humidity: totals.humidity / f64::from(totals.readings),
            mean_temperature: totals.temperature / f64::from(totals.readings),
        })
    }
}

/// Prints summaries and tells `main` how many it saw.
struct Display {
    seen: mpsc::UnboundedSender<Summary>,
}

#[transport::service]
impl Display {
    #[subscriber(topic = SUMMARIES)]
    async fn show(&self, summary: Summary) {
        println!(
            "display:    {:<8} {:>2} readings, mean {:.1} °C, {:.1} % RH",
            summary.room, summary.readings, summary.mean_temperature, summary.mean_humidity
        );
        let _ = self.seen.send(summary);
    }
}

const ROOMS: [&str; 2] = ["kitchen", "cellar"];
const READINGS_PER_ROOM: u32 = 5;

#[tokio::main]
async fn main() -> Result<(), transport::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let (seen, mut summaries) = mpsc::unbounded_channel();
    let app = transport::App::from_env()?
        .service(Aggregator::default())
        .service(Display { seen });
    // `quickstart list | asyncapi | check` describe the App instead of running it
    if app.run_command_from_args()? {
        return Ok(());
    }
    let app = app.start().await?;
    println!(
        "started on the `{}` broker; publishing {} readings",
        app.backend().kind(),
        READINGS_PER_ROOM * ROOMS.len() as u32
    );

    for i in 0..READINGS_PER_ROOM {
        for (r, room) in ROOMS.iter().enumerate() {
            let reading = Hygrothermograph {
                room: (*room).to_string(),
                humidity: 40.0 + f64::from(i) + 10.0 * r as f64,
                temperature: 21.0 - 8.0 * r as f64 + 0.25 * f64::from(i),
            };
            // `send` takes only a `&Hygrothermograph`: the topic fixes the type.
            app.publisher().send(&READINGS, &reading).await?;
        }
    }

    let expected = READINGS_PER_ROOM as usize * ROOMS.len();
    let mut received = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    while received < expected {
        tokio::select! {
            Some(_) = summaries.recv() => received += 1,
            _ = &mut deadline => break,
        }
    }
    app.shutdown().await?;
    if received < expected {
        eprintln!("only {received} of {expected} summaries arrived in time");
        std::process::exit(1);
    }
    println!("done: {received} summaries, shut down cleanly");
    Ok(())
}
