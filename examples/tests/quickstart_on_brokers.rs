//! The quickstart runs unchanged on every broker: only `TRANSPORT_BROKER__KIND` differs.
//! (Cargo builds the package's examples before running its tests.)

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn quickstart() -> PathBuf {
    // <target>/<profile>/deps/<this test> -> <target>/<profile>/examples/quickstart
    transport_examples::example_binary("quickstart")
}

fn reachable(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn run_on(kind: Option<&str>, port: u16) {
    run_on_with(kind, port, &[]);
}

fn run_on_with(kind: Option<&str>, port: u16, environment: &[(&str, String)]) {
    if port != 0 && !reachable(port) {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{kind:?} broker unreachable on port {port} in CI");
        }
        eprintln!("SKIPPED: {kind:?} broker unreachable on port {port} (scripts/brokers up)");
        return;
    }
    let mut command = Command::new(quickstart());
    command
        .env_remove("TRANSPORT_CONFIG")
        .env("RUST_LOG", "warn")
        .envs(environment.iter().map(|(name, value)| (name, value)));
    if let Some(kind) = kind {
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        command
            .env("TRANSPORT_BROKER__KIND", kind)
            // isolates this run's topics on a shared, persistent broker
            .env("TRANSPORT_BROKER__TOPIC_PREFIX", format!("qs{run}."));
    }
    let output = command
        .output()
        .expect("the quickstart example was built by cargo test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "quickstart on {kind:?} failed:\n{stdout}\n{stderr}"
    );
    let expected_kind = kind.unwrap_or("memory");
    assert!(
        stdout.contains(&format!("started on the `{expected_kind}` broker")),
        "{stdout}"
    );
    assert!(
        stdout.contains("done: 10 summaries, shut down cleanly"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("display:").count(), 10, "{stdout}");
}

#[test]
fn on_the_embedded_broker_with_no_configuration() {
    run_on(None, 0);
}

#[test]
fn on_nats() {
    run_on(Some("nats"), 4222);
}

#[test]
fn on_jetstream() {
    run_on(Some("jetstream"), 4222);
}

#[test]
fn on_redis_pub_sub() {
    run_on(Some("redis"), 6379);
}

#[test]
fn on_redis_streams() {
    run_on(Some("redis-streams"), 6379);
}

#[test]
fn on_rabbitmq() {
    run_on(Some("rabbitmq"), 5672);
}

#[test]
fn on_mqtt() {
    run_on(Some("mqtt"), 1883);
}

#[cfg(feature = "kafka")]
#[test]
fn on_kafka() {
    run_on(Some("kafka"), 9092);
}

/// No registry ships nsqd: this runs where `NSQD_TCP_ADDRESS` names one (`127.0.0.1:4150`).
#[test]
fn on_nsq() {
    let Some(port) = std::env::var("NSQD_TCP_ADDRESS")
        .ok()
        .and_then(|address| address.rsplit_once(':')?.1.parse().ok())
    else {
        eprintln!("SKIPPED: nsq: NSQD_TCP_ADDRESS is not set (no package registry ships nsqd)");
        return;
    };
    run_on_with(
        Some("nsq"),
        port,
        &[("TRANSPORT_BROKER__URL", format!("nsq://127.0.0.1:{port}"))],
    );
}

/// The benchmark binary keeps working (tiny run; its numbers are not checked here).
#[test]
fn the_benchmark_runs() {
    let output = Command::new(transport_examples::example_binary("bench"))
        .args(["--messages", "200", "--backends", "memory"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("memory"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.trim_end().ends_with('x'), "{row}");
}
