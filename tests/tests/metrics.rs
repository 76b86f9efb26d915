//! The metrics a scrape shows: an App with `[metrics] address` serves `/metrics` in the
//! Prometheus text format, and after messages that succeed, fail until dead-lettered,
//! and do not decode, and a publish the backend refuses, each count is what happened.

use std::io::{Read, Write};
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
    let running = App::new(config).start().await.unwrap();
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
        .start()
        .await
        .err()
        .expect("the start fails");
    assert!(
        matches!(error, Error::Metrics(_)) && error.to_string().contains(&address.to_string()),
        "{error}"
    );
}
