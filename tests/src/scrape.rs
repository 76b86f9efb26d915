//! Reading an App's `/metrics` endpoint, and a burst at a subscriber held back, for the
//! tests of what the metrics count.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use transport::{App, Config, Running};

/// `GET /metrics` from `address`.
pub fn scrape(address: std::net::SocketAddr) -> String {
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
pub fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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

/// Polls the scrape of `address` until `transport_dropped_total` of `backend` is there.
pub async fn dropped(address: std::net::SocketAddr, backend: &str) -> f64 {
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
pub async fn flood(
    toml: &str,
    subscriber: &'static str,
    sent: u32,
) -> (Running, std::net::SocketAddr) {
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
