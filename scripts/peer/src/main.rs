//! The workload of `examples/bench.rs`'s `inprocess` row on ruststream 0.7.7's in-memory
//! broker (publish `Reading` as JSON, deliver, decode, handle, ack), and `--raw` its
//! `memory` row's raw side (an `async-channel` of `serde_json` payloads), so that
//! `scripts/peer-instructions` counts them as `scripts/instructions` counts ours.
//!
//!     peer [--raw] --messages N
//!
//! Differences the peer's API imposes: no consumer group (its memory broker has none) and
//! no headers (no content type, message id or trace context); its ack drops the delivery.
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use ruststream::memory::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize, Outgoing)]
pub struct Reading {
    pub sensor: u32,
    pub humidity: f64,
    pub temperature: f64,
}

fn reading(i: u64) -> Reading {
    Reading {
        sensor: (i % 64) as u32,
        humidity: 40.0 + (i % 20) as f64,
        temperature: 20.0 + (i % 10) as f64 / 4.0,
    }
}

/// Counts handled messages and wakes main at the target (same as our bench's Counter).
struct Counter {
    seen: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Counter {
    fn global() -> &'static Counter {
        static COUNTER: OnceLock<Counter> = OnceLock::new();
        COUNTER.get_or_init(|| Counter {
            seen: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }

    fn hit(&self, reading: &Reading) {
        std::hint::black_box(reading);
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == self.target.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
    }
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
    counter.target.store(n, Ordering::SeqCst);
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

async fn raw(n: u64) {
    // an in-process channel of encoded payloads, decoded by one consumer task (as our bench's raw side)
    let (tx, rx) = async_channel::unbounded::<bytes::Bytes>();
    let consumer = tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            let Ok(payload) = rx.recv().await else { break };
            let reading: Reading =
                serde_json::from_slice(&payload).unwrap_or_else(|e| panic!("{e}"));
            std::hint::black_box(&reading);
            seen += 1;
        }
        seen
    });
    for i in 0..n {
        let payload = bytes::Bytes::from(serde_json::to_vec(&reading(i)).unwrap_or_default());
        let _ = tx.send(payload).await;
    }
    assert_eq!(consumer.await.expect("consumer"), n);
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
        raw(n).await;
        println!("raw {n}");
    } else {
        let elapsed = framework(n).await;
        println!(
            "ruststream {n} deliveries: {:.0}/s",
            n as f64 / elapsed.as_secs_f64()
        );
    }
}
