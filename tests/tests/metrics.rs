//! The metrics a scrape shows: an App with `[metrics] address` serves `/metrics` in the
//! Prometheus text format, and after messages that succeed, fail until dead-lettered,
//! and do not decode, and a publish the backend refuses, each count is what happened; on
//! Redis pub/sub, what is dropped for a subscriber too slow to take it is counted (NATS
//! core's: `nats_drops.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use transport::{App, Config, Error};
use transport_tests::scrape::{dropped, flood, sample, scrape};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    fail: bool,
}

#[transport::subscriber(topic = "metrics.orders", group = "shop")]
async fn take_order(order: Order) -> Result<(), Error> {
    if order.fail {
        return Err(Error::msg(format!("order {} refused", order.id)));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_what_succeeded_failed_and_did_not_decode() {
    let mut config = Config::for_test();
    config.subscriber.max_attempts = 2;
    config.metrics.address = Some("127.0.0.1:0".parse().unwrap());
    // (this file's subscriber alone: the test crate's library, linked in, declares others)
    let running = App::new(config)
        .select(|r| r.name == "take_order")
        .start()
        .await
        .unwrap();
    let address = running.metrics_address().expect("the endpoint's address");
    let publisher = running.publisher();
    for id in 0..3 {
        publisher
            .publish("metrics.orders", &Order { id, fail: false })
            .await
            .unwrap();
    }
    publisher
        .publish("metrics.orders", &Order { id: 9, fail: true })
        .await
        .unwrap();
    publisher
        .publish_message(
            "metrics.orders",
            transport::Message::new("not json").with_header("content-type", "application/json"),
        )
        .await
        .unwrap();
    // a topic the backend refuses: a publish error
    assert!(publisher.publish("bad..topic", &1).await.is_err());

    let subscriber = [
        ("subscriber", "take_order"),
        ("topic", "metrics.orders"),
        ("group", "shop"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(address);
        let dead = |reason| {
            let mut labels = subscriber.to_vec();
            labels.push(("reason", reason));
            sample(&text, "transport_dead_lettered_total", &labels)
        };
        if dead("handler") == Some(1.0) && dead("decode") == Some(1.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letters counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = subscriber.to_vec();
        labels.push(extra);
        labels
    };
    // three good, the failing one twice, the undecodable one once
    assert_eq!(
        sample(&text, "transport_received_total", &subscriber),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "transport_handled_total", &subscriber),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "transport_failed_total", &with(("kind", "handler"))),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "transport_failed_total", &with(("kind", "panic"))),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "transport_retried_total", &subscriber),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "transport_decode_errors_total", &subscriber),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "transport_handler_duration_seconds_count",
            &subscriber
        ),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "transport_in_flight", &subscriber),
        Some(0.0),
        "{text}"
    );
    let memory = [("backend", "memory")];
    assert_eq!(
        sample(&text, "transport_publish_duration_seconds_count", &memory),
        Some(6.0),
        "five published and one refused: {text}"
    );
    assert_eq!(
        sample(&text, "transport_publish_errors_total", &memory),
        Some(1.0),
        "{text}"
    );
    running.shutdown().await.unwrap();
    // the endpoint stops with the App
    assert!(std::net::TcpStream::connect(address).is_err());
}

/// An address already taken fails the start with an error naming it, and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_address_fails_the_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let mut config = Config::for_test();
    config.metrics.address = Some(address);
    let error = App::new(config)
        .select(|r| r.name == "take_order")
        .start()
        .await
        .err()
        .expect("the start fails");
    assert!(
        matches!(error, Error::Metrics(_)) && error.to_string().contains(&address.to_string()),
        "{error}"
    );
}

/// Holds the Redis pub/sub subscriber's handler until closed.
static REDIS_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
/// Messages the Redis pub/sub subscriber handled.
static REDIS_HANDLED: AtomicU64 = AtomicU64::new(0);

#[transport::subscriber(topic = "metrics.flood", group = "slow-redis")]
async fn too_slow_for_redis(_n: u32) {
    let _ = REDIS_GATE.acquire().await;
    REDIS_HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// Redis pub/sub: a subscription's queue holds `prefetch` messages; with its handler held,
/// the rest of a burst is dropped, and every message is either handled or counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_redis_pub_sub_drops_for_a_subscriber_too_slow_is_counted() {
    if !transport_tests::require_broker(6379, "redis") {
        return;
    }
    let prefix = transport_tests::unique("dropped");
    let sent = 300u32;
    let toml = format!(
        "[broker]\nkind = \"redis\"\ntopic_prefix = \"{prefix}.\"\n[subscriber]\nprefetch = 8\n"
    );
    let (running, address) = flood(&toml, "too_slow_for_redis", sent).await;
    // every message reached the subscription's connection: what was not queued is dropped
    let mut dropped = dropped(address, "redis").await;
    REDIS_GATE.close();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let handled = REDIS_HANDLED.load(Ordering::SeqCst);
        if handled + dropped as u64 == u64::from(sent) {
            // most of the burst found the queue full
            assert!(handled < 100, "handled {handled}, dropped {dropped}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{handled} handled and {dropped} dropped of {sent}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        dropped = sample(
            &scrape(address),
            "transport_dropped_total",
            &[("backend", "redis")],
        )
        .unwrap_or(dropped);
    }
    running.shutdown().await.unwrap();
}
