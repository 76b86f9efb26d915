//! Shared helpers of the integration tests.

pub mod broker;
pub mod conformance;
pub mod interop;
pub mod proxy;
pub mod scrape;
pub mod scripted;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Whether this run is CI's (`CI=true`), where every broker must be there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether something listens on the broker's loopback `port`. When not, the caller skips
/// (printing why), except in CI, where an unreachable broker fails the test.
pub fn require_broker(port: u16, name: &str) -> bool {
    if broker::listening(port) {
        return true;
    }
    let message =
        format!("{name} broker unreachable on 127.0.0.1:{port} (start it with scripts/brokers up)");
    assert!(!in_ci(), "{message}: in CI every broker must run");
    eprintln!("SKIPPED: {message}");
    false
}

/// A name no other test in this process uses (for brokers, topics, groups).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A memory-broker configuration of its own, with quick retries.
pub fn memory_config(extra: &str) -> transport::Config {
    let text = format!(
        "[broker]\nkind = \"memory\"\nname = \"{}\"\n[subscriber]\nbackoff = \"10ms\"\nbackoff_max = \"50ms\"\n{extra}",
        unique("broker")
    );
    match transport::Config::from_toml(&text) {
        Ok(config) => config,
        Err(error) => panic!("test config does not parse: {error}\n{text}"),
    }
}

/// Receives `count` values, or panics naming what is missing after [`PATIENCE`].
pub async fn receive<T>(rx: &mut mpsc::UnboundedReceiver<T>, count: usize) -> Vec<T> {
    let mut got = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while got.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(value)) => got.push(value),
            Ok(None) => panic!("channel closed after {} of {count} values", got.len()),
            Err(_) => panic!("timed out after {} of {count} values", got.len()),
        }
    }
    got
}

/// Asks `find` every 20 ms until it gives a value, for at most [`PATIENCE`]; past that,
/// panics with `what` and the last state `find` described (its `Err`).
pub async fn eventually<T>(what: &str, mut find: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match find().await {
            Ok(found) => return found,
            Err(state) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what} never happened: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts nothing more arrives within `quiet`.
pub async fn assert_quiet<T: std::fmt::Debug>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    quiet: Duration,
) {
    if let Ok(Some(value)) = tokio::time::timeout(quiet, rx.recv()).await {
        panic!("expected nothing more, got {value:?}");
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}
