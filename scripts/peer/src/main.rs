//! The workload of `examples/bench.rs`'s `inprocess` row on ruststream 0.7.7's in-memory
//! broker (publish `Reading` as JSON, deliver, decode, handle, ack), and `--raw` its
//! `memory` row's raw side (an `async-channel` of `serde_json` payloads), so that
//! `scripts/peer-instructions` counts them as `scripts/instructions` counts ours.
//!
//!     peer [--raw] --messages N
//!
//! Differences the peer's API imposes: no consumer group (its memory broker has none) and
//! no headers (no content type, message id or trace context); its ack drops the delivery.
use std::sync::atomic::Ordering;

use ruststream::memory::prelude::*;
use serde::{Deserialize, Serialize};

// the bench's own workload: `reading(i)` and the handled-message counter
#[path = "../../../examples/bench/workload.rs"]
mod workload;
use workload::{Counter, channel_drain, reading};

#[derive(Debug, Serialize, Deserialize, Outgoing)]
pub struct Reading {
    pub sensor: u32,
    pub humidity: f64,
    pub temperature: f64,
}

// The memory broker has no consumer groups / queue groups: a plain subscription.
#[subscriber("bench.readings")]
async fn on_reading(reading: &Reading) -> HandlerOutcome {
    Counter::global().hit(reading);
    HandlerOutcome::ack()
}

/// Publishes and drains `n` readings; the time from the App's start to the last one
/// handled (as `examples/bench.rs` times its `inprocess` row).
async fn framework(n: u64) -> std::time::Duration {
    let counter = Counter::global();
    counter.reset(n);
    let done = counter.done.notified();
    tokio::pin!(done);
    done.as_mut().enable();

    let started = std::time::Instant::now();
    let broker = MemoryBroker::new().bindable();
    let egress = broker.bind(Publish);
    let app = RustStream::new(AppInfo::new("bench", "0.1.0")).with_broker(broker, |b| {
        b.include(on_reading);
    });
    let running = app.start().await.expect("app starts");
    let publisher = running.publisher(egress).await.expect("publisher pairs");
    for i in 0..n {
        publisher
            .message(&reading(i))
            .to("bench.readings")
            .publish()
            .await
            .expect("publish");
    }
    done.await;
    let elapsed = started.elapsed();
    assert_eq!(counter.seen.load(Ordering::SeqCst), n);
    running.shutdown().await.expect("shutdown");
    elapsed
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut n: u64 = 20_000;
    let mut raw_only = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--messages" => {
                n = args[i + 1].parse().expect("--messages N");
                i += 2;
            }
            "--raw" => {
                raw_only = true;
                i += 1;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if raw_only {
        assert_eq!(channel_drain(n).await, n);
        println!("raw {n}");
    } else {
        let elapsed = framework(n).await;
        println!(
            "ruststream {n} deliveries: {:.0}/s",
            n as f64 / elapsed.as_secs_f64()
        );
    }
}
