//! NATS core: what the client drops for a subscriber too slow to take it is counted.
//! Alone in its test binary: its App connects its backend before any App of the process
//! has installed the metrics recorder, as a service's only App does (a count registered
//! at connect time would go nowhere).

use transport_tests::scrape::{dropped, flood};

/// Holds the subscriber's handler until closed.
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[transport::subscriber(topic = "metrics.flood", group = "slow-nats")]
async fn too_slow_for_nats(_n: u32) {
    // (a closed gate lets every handler through)
    let _ = GATE.acquire().await;
}

/// A burst past what the client queues for a subscription (65,536) while its handler is
/// held: the client drops the rest, and each drop it reports is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_nats_core_drops_for_a_subscriber_too_slow_is_counted() {
    let Some(broker) = transport_tests::broker::PrivateBroker::start_or_skip(
        transport_tests::broker::Server::Nats,
    ) else {
        return;
    };
    let sent = 80_000u32;
    let toml = format!("[broker]\nkind = \"nats\"\nurl = \"{}\"\n", broker.url());
    let (running, address) = flood(&toml, "too_slow_for_nats", sent).await;
    let dropped = dropped(address, "nats").await;
    // (the client reports drops through a queue of its own that overflows too: each one
    // reported is counted, at most what was sent past the subscription's queue)
    assert!(
        dropped >= 1.0 && dropped <= f64::from(sent - 65_536),
        "dropped {dropped} of {sent}"
    );
    GATE.close();
    running.shutdown().await.unwrap();
}
