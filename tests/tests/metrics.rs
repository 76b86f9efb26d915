//! The metrics a scrape shows: an App with `[metrics] address` serves `/metrics` in the
//! Prometheus text format, and after messages that succeed, fail until dead-lettered,
//! and do not decode, and a publish the backend refuses, each count is what happened; on
//! the at-most-once backends (NATS core, Redis pub/sub), what is dropped for a subscriber
//! too slow to take it is counted.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use transport::{App, Config, Error};

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

/// `GET /metrics` from `address`.
fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream =
        std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain"), "{head}");
    body.to_string()
}

/// The value of the sample `name` whose labels include every one of `labels`.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let matches = labels
            .iter()
            .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
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

/// Holds the NATS core subscriber's handler until closed.
static NATS_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
/// Holds the Redis pub/sub subscriber's handler until closed.
static REDIS_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
/// Messages the Redis pub/sub subscriber handled.
static REDIS_HANDLED: AtomicU64 = AtomicU64::new(0);

#[transport::subscriber(topic = "metrics.flood", group = "slow-nats")]
async fn too_slow_for_nats(_n: u32) {
    // (a closed gate lets every handler through)
    let _ = NATS_GATE.acquire().await;
}

#[transport::subscriber(topic = "metrics.flood", group = "slow-redis")]
async fn too_slow_for_redis(_n: u32) {
    let _ = REDIS_GATE.acquire().await;
    REDIS_HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// Polls the scrape of `address` until `transport_dropped_total` of `backend` is there.
async fn dropped(address: std::net::SocketAddr, backend: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(address);
        if let Some(dropped) = sample(&text, "transport_dropped_total", &[("backend", backend)]) {
            return dropped;
        }
        assert!(
            Instant::now() < deadline,
            "nothing dropped counted on {backend}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts an App on the broker `toml` names, with the metrics endpoint and `subscriber`
/// alone, and publishes `sent` numbers to `metrics.flood`; the App and its endpoint.
async fn flood(
    toml: &str,
    subscriber: &'static str,
    sent: u32,
) -> (transport::Running, std::net::SocketAddr) {
    let mut config = Config::from_toml(toml).unwrap();
    config.metrics.address = Some("127.0.0.1:0".parse().unwrap());
    let running = App::new(config)
        .select(move |r| r.name == subscriber)
        .start()
        .await
        .unwrap();
    let address = running.metrics_address().expect("the endpoint's address");
    for n in 0..sent {
        running
            .publisher()
            .publish("metrics.flood", &n)
            .await
            .unwrap();
    }
    (running, address)
}

/// NATS core: a burst past what the client queues for a subscription (65,536) while its
/// handler is held: the client drops the rest, and each drop it reports is counted.
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
    // (the client reports drops through a queue of its own that may overflow too: each
    // one reported is counted, at most what was sent past the subscription's queue)
    assert!(
        dropped >= 1.0 && dropped <= f64::from(sent - 65_536),
        "dropped {dropped} of {sent}"
    );
    NATS_GATE.close();
    running.shutdown().await.unwrap();
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
