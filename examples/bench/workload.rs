//! The bench's workload, shared with `scripts/peer` (which includes this file), so that
//! both frameworks, and the bare channel both are set against, are measured on the same
//! messages and the same handler work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Reading;

/// The `i`-th reading of a backlog.
pub fn reading(i: u64) -> Reading {
    Reading {
        sensor: (i % 64) as u32,
        humidity: 40.0 + (i % 20) as f64,
        temperature: 20.0 + (i % 10) as f64 / 4.0,
    }
}

/// Counts handled messages, notes when the first was, and wakes the timer at the target.
pub struct Counter {
    pub seen: AtomicU64,
    pub target: AtomicU64,
    pub done: Notify,
    first: Mutex<Option<Instant>>,
}

impl Counter {
    pub fn global() -> &'static Counter {
        static COUNTER: OnceLock<Counter> = OnceLock::new();
        COUNTER.get_or_init(|| Counter {
            seen: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
            first: Mutex::new(None),
        })
    }

    pub fn reset(&self, target: u64) {
        self.seen.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
        *self.first.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// From the first message handled since `reset` until now.
    #[allow(dead_code)] // the peer's bench times from its start
    pub fn since_first(&self) -> Duration {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(Duration::ZERO, |first| first.elapsed())
    }

    pub fn hit(&self, reading: &Reading) {
        std::hint::black_box(reading);
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == 1 {
            *self.first.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
        if seen == self.target.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
    }
}

/// The raw in-process side: `n` readings encoded with `serde_json` into an
/// `async-channel`, decoded by one consumer task. Returns how many were decoded.
pub async fn channel_drain(n: u64) -> u64 {
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
    consumer.await.unwrap_or(0)
}
