//! The realtime map's server as deployed, on Mosquitto: its binary (with its synthetic
//! feed, clock sped up) answers the REST API, sends a WebSocket client only the vehicles
//! inside the viewport it reported (and fewer once it reports a smaller one), and sends
//! geofence notices; SIGTERM stops it with 0. And its page in Chromium.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Whether Mosquitto answers on 1883; in CI it must.
fn mosquitto() -> bool {
    if std::net::TcpStream::connect(("127.0.0.1", 1883)).is_ok() {
        return true;
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "mosquitto unreachable on 1883 in CI"
    );
    eprintln!("SKIPPED: mosquitto unreachable on 1883 (scripts/brokers up)");
    false
}

fn http_get(address: &str, path: &str) -> serde_json::Value {
    let body = transport_examples::http_get(address, path);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// What the socket sends within `window`: positions (vehicle, lat, long) and notices.
async fn collect(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    window: Duration,
) -> (Vec<(u64, f64, f64)>, Vec<serde_json::Value>) {
    let until = tokio::time::Instant::now() + window;
    let (mut positions, mut notices) = (Vec::new(), Vec::new());
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, socket.next()).await {
        let Message::Text(text) = message else {
            continue;
        };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        let payload = &frame["payload"];
        match frame["type"].as_u64() {
            Some(2) => positions.push((
                payload["veh"].as_u64().unwrap(),
                payload["lat"].as_f64().unwrap(),
                payload["long"].as_f64().unwrap(),
            )),
            Some(3) => notices.push(payload.clone()),
            _ => {}
        }
    }
    (positions, notices)
}

async fn report(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    (south, west, north, east): (f64, f64, f64, f64),
) {
    let viewport = serde_json::json!({"type": 1, "payload": {"south": south, "west": west, "north": north, "east": east}});
    socket
        .send(Message::text(viewport.to_string()))
        .await
        .unwrap();
}

/// The server process, killed if the test ends early.
struct Server(std::process::Child);

impl Server {
    /// The binary on Mosquitto with its feed ten times faster, listening on a free port;
    /// and that `host:port`.
    fn start() -> (Server, String) {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut server = Server(
            Command::new(transport_examples::example_binary("realtimemap"))
                .env_remove("TRANSPORT_CONFIG")
                .env("TRANSPORT_BROKER__KIND", "mqtt")
                .env("TRANSPORT_BROKER__MQTT__CLIENT_ID", format!("rtm{run}"))
                .env("REALTIMEMAP_HTTP", "127.0.0.1:0")
                .env("REALTIMEMAP_SPEEDUP", "10")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("start realtimemap: {e}")),
        );
        let first = BufReader::new(server.0.stdout.take().unwrap())
            .lines()
            .next()
            .and_then(Result::ok)
            .unwrap_or_default();
        let address = first
            .strip_prefix("realtimemap listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_string();
        (server, address)
    }

    /// SIGTERM, and it exits with 0 within 20 s.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(exit) = self.0.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "still running after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(exit.success(), "{exit:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn vehicles_reach_only_the_browsers_whose_viewport_holds_them() {
    if !mosquitto() {
        return;
    }
    let (mut server, address) = Server::start();

    // the REST API: every operator's four vehicles, once they have been seen
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let organizations = http_get(&address, "/api/organization");
        let counts: Vec<u64> = organizations
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["vehicles"].as_u64().unwrap())
            .collect();
        if counts == [4, 4, 4] {
            break;
        }
        assert!(Instant::now() < deadline, "organizations: {organizations}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let operator = http_get(&address, "/api/organization/12");
    assert_eq!(
        operator["vehicles"].as_array().unwrap().len(),
        4,
        "{operator}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let trail = http_get(&address, "/api/trail/100");
        if trail.as_array().unwrap().len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "trail: {trail}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // route 550's loop (and nothing of the others')
    let wide = (60.158, 24.868, 60.182, 24.932);
    report(&mut socket, wide).await;
    let (positions, notices) = collect(&mut socket, Duration::from_secs(6)).await;
    assert!(!positions.is_empty(), "nothing sent for the viewport");
    for (vehicle, lat, long) in &positions {
        assert!(
            (wide.0..=wide.2).contains(lat) && (wide.1..=wide.3).contains(long),
            "vehicle {vehicle} at {lat},{long} is outside the viewport"
        );
    }
    let vehicles: std::collections::BTreeSet<u64> = positions.iter().map(|p| p.0).collect();
    assert_eq!(
        vehicles,
        [100, 103, 106, 109].into_iter().collect(),
        "route 550's vehicles only"
    );
    // a lap is 12 s at ten times the speed: Kamppi was entered or left in 6 s
    assert!(
        notices.iter().any(|n| n["geofence"] == "Kamppi"),
        "no Kamppi notice: {notices:?}"
    );

    // a smaller viewport: a quarter of the loop, so fewer positions
    report(&mut socket, (60.158, 24.868, 60.170, 24.900)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fewer, _) = collect(&mut socket, Duration::from_secs(6)).await;
    assert!(
        fewer.len() * 2 < positions.len(),
        "the smaller viewport got {} positions, the wide one {}",
        fewer.len(),
        positions.len()
    );
    println!(
        "realtimemap: {} positions in 6 s for the wide viewport, {} for the small one; {} geofence notices",
        positions.len(),
        fewer.len(),
        notices.len()
    );

    server.stop();
}

/// The page in Chromium (`browser/realtimemap.cjs`): vehicles drawn and moving between two
/// screenshots, a geofence notice shown, and a smaller map viewport making the socket send
/// fewer positions; the screenshots are kept under the target directory
/// (`<target>/tmp/realtimemap/`).
#[test]
fn the_page_draws_moving_vehicles_and_notices_and_a_smaller_view_gets_less() {
    let Some(modules) = transport_examples::browser_tools() else {
        return;
    };
    if transport_examples::leaflet().is_none() {
        return;
    }
    if !mosquitto() {
        return;
    }
    let (mut server, address) = Server::start();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("realtimemap");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/realtimemap.cjs");
    let browser = Command::new("node")
        .arg(&script)
        .arg(format!("http://{address}"))
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap_or_else(|e| panic!("run node: {e}"));
    assert!(
        browser.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&browser.stdout),
        String::from_utf8_lossy(&browser.stderr)
    );
    println!("{}", String::from_utf8_lossy(&browser.stdout).trim());
    for shot in ["realtimemap-1.png", "realtimemap-2.png"] {
        let bytes = std::fs::read(shots.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }
    server.stop();
}
