//! Liveness and readiness: not ready before start, ready once every subscription is bound,
//! not ready while draining, neither once stopped (through `Health` and the probes on the
//! metrics endpoint); on NATS, not ready while the server is down, ready again once it
//! is back; on RabbitMQ and Redis pub/sub, not ready while the connection is lost, ready
//! again (the reconnection counted, Redis's channel subscribed again) once it is back.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use transport::health::Phase;
use transport::{App, Config};
use transport_tests::broker::{PrivateBroker, Server};
use transport_tests::proxy::Proxy;

/// Lets the handler of `health.slow` finish.
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[transport::subscriber(topic = "health.slow", group = "probe")]
async fn slow(_text: String) {
    if let Ok(permit) = GATE.acquire().await {
        permit.forget();
    }
}

/// The status code and body of `GET path` from `address`.
fn get(address: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut stream =
        std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, body)
}

/// Polls `GET path` until it answers `status`, within `limit`.
async fn until(
    address: std::net::SocketAddr,
    path: &str,
    status: u16,
    limit: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let (got, body) = get(address, path);
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got}, not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn with_endpoint(mut config: Config) -> Config {
    config.metrics.address = Some("127.0.0.1:0".parse().unwrap());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_started_not_while_draining_and_neither_once_stopped() {
    let app = App::new(with_endpoint(Config::for_test())).select(|r| r.name == "slow");
    let health = app.health();
    assert_eq!(health.phase(), Phase::Starting);
    assert!(health.is_live() && !health.is_ready());
    let running = app.start().await.unwrap();
    let address = running.metrics_address().unwrap();
    let (status, live) = get(address, "/health/live");
    assert_eq!(
        (status, live["live"].as_bool()),
        (200, Some(true)),
        "{live}"
    );
    let (status, ready) = get(address, "/health/ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["phase"], "running");
    assert_eq!(ready["backend"]["kind"], "memory");
    assert_eq!(
        ready["subscriptions"],
        serde_json::json!([{"subscriber": "slow", "topic": "health.slow", "bound": true}])
    );

    // a handler under way when shutdown begins: draining, so not ready, still live
    running
        .publisher()
        .publish("health.slow", &"hold")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(running.shutdown());
    let draining = until(address, "/health/ready", 503, Duration::from_secs(5)).await;
    assert_eq!(draining["phase"], "draining", "{draining}");
    assert_eq!(get(address, "/health/live").0, 200);
    GATE.add_permits(1);
    stopping.await.unwrap().unwrap();
    assert_eq!(health.phase(), Phase::Stopped);
    assert!(!health.is_live() && !health.is_ready());
}

/// Runs `slow` on `config` (a `kind` backend), ready; then `outage(true)` loses the
/// connection: 503 with the backend not connected, still live; then `outage(false)` gives
/// it back: ready again. Returns the running App and its metrics address.
async fn not_ready_during(
    config: Config,
    kind: &str,
    mut outage: impl FnMut(bool),
) -> (transport::Running, std::net::SocketAddr) {
    let running = App::new(with_endpoint(config))
        .select(|r| r.name == "slow")
        .start()
        .await
        .unwrap();
    let address = running.metrics_address().unwrap();
    let ready = until(address, "/health/ready", 200, Duration::from_secs(5)).await;
    assert_eq!(
        ready["backend"],
        serde_json::json!({"kind": kind, "connected": true})
    );
    outage(true);
    let down = until(address, "/health/ready", 503, Duration::from_secs(10)).await;
    assert_eq!(down["backend"]["connected"], false, "{down}");
    assert_eq!(down["phase"], "running");
    assert_eq!(get(address, "/health/live").0, 200);
    outage(false);
    until(address, "/health/ready", 200, Duration::from_secs(30)).await;
    (running, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_not_ready_while_the_server_is_down_and_ready_once_it_is_back() {
    let Some(mut broker) = PrivateBroker::start_or_skip(Server::Nats) else {
        return;
    };
    let config = Config::from_toml(&format!(
        "[broker]\nkind = \"nats\"\nurl = \"{}\"\n",
        broker.url()
    ))
    .unwrap();
    let (running, _) = not_ready_during(config, "nats", |down| match down {
        true => broker.kill(),
        false => broker.restart().unwrap(),
    })
    .await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_not_ready_while_the_connection_is_lost_and_ready_once_it_is_back() {
    if !transport_tests::require_broker(5672, "rabbitmq") {
        return;
    }
    let (running, _relay) = through_a_cut_relay("rabbitmq", "127.0.0.1:5672", |relay| {
        format!("amqp://guest:guest@{relay}/%2f")
    })
    .await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_not_ready_while_the_connection_is_lost_and_ready_once_it_is_back() {
    if !transport_tests::require_broker(6379, "redis") {
        return;
    }
    let (running, _relay) = through_a_cut_relay("redis", "127.0.0.1:6379", |relay| {
        format!("redis://{relay}")
    })
    .await;
    // subscribed again, on the connection made through the relay (the cut one is gone)
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let (channel, subscribers): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("health.slow")
        .query_async::<(String, u64)>(&mut connection)
        .await
        .unwrap();
    assert_eq!((channel.as_str(), subscribers), ("health.slow", 1));
    running.shutdown().await.unwrap();
}

/// `not_ready_during` on a `kind` backend whose connections run through a relay to
/// `upstream` (`url` makes the backend's URL from the relay's address), the outage being
/// the relay cut: the shared broker stays up. Checks that the reconnection was counted;
/// returns the App and the relay, still relaying.
async fn through_a_cut_relay(
    kind: &str,
    upstream: &str,
    url: impl FnOnce(std::net::SocketAddr) -> String,
) -> (transport::Running, Proxy) {
    let proxy = Proxy::start(upstream).await.unwrap();
    let config = Config::from_toml(&format!(
        "[broker]\nkind = \"{kind}\"\nurl = \"{}\"\n",
        url(proxy.address())
    ))
    .unwrap();
    let (running, address) = not_ready_during(config, kind, |down| match down {
        true => proxy.cut(),
        false => proxy.restore(),
    })
    .await;
    assert!(reconnects(address, kind) >= 1.0);
    (running, proxy)
}

/// `transport_backend_reconnects_total` of `backend` in the scrape of the metrics
/// endpoint at `address`.
fn reconnects(address: std::net::SocketAddr, backend: &str) -> f64 {
    let scrape = scrape(address);
    let series = format!("transport_backend_reconnects_total{{backend=\"{backend}\"}}");
    scrape
        .lines()
        .find(|line| line.starts_with(&series))
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {backend} reconnects in {scrape}"))
}

/// The text of `GET /metrics` at `address` (the endpoint `get` reads JSON from).
fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut scrape = String::new();
    stream.read_to_string(&mut scrape).unwrap();
    scrape
}
