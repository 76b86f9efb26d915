//! The saver end to end over real brokers, as deployed: its binary consumes, its
//! `publish` mode produces N reports of each kind, the consumer is killed (SIGKILL)
//! mid-stream and started again, so some messages are delivered twice; PostgreSQL then
//! holds exactly N rows of each kind (4N readings), and the read side's averages count
//! every reading. On Redis streams and Kafka (with `--features kafka`).

#[allow(dead_code)]
#[path = "../saver/service.rs"]
mod service;
#[allow(dead_code)]
#[path = "../saver/store.rs"]
mod store;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const N: i64 = 300;

fn reachable(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The saver binary on `kind`, this run's topics and schema.
fn saver(kind: &str, prefix: &str, schema: &str) -> Command {
    let mut command = Command::new(transport_examples::example_binary("saver"));
    command
        .env_remove("TRANSPORT_CONFIG")
        .env("TRANSPORT_BROKER__KIND", kind)
        .env("TRANSPORT_BROKER__TOPIC_PREFIX", prefix)
        // a killed consumer's messages come back within a second or a few
        .env("TRANSPORT_BROKER__REDIS__CLAIM_IDLE", "1s")
        .env("TRANSPORT_BROKER__REDIS__CLAIM_INTERVAL", "200ms")
        .env("TRANSPORT_BROKER__KAFKA__SESSION_TIMEOUT", "6s")
        .env("TRANSPORT_BROKER__KAFKA__COMMIT_INTERVAL", "100ms")
        .env("SAVER_SCHEMA", schema)
        .env("SAVER_HTTP", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

/// A running consumer, its log lines on a channel.
struct Consumer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Consumer {
    fn start(kind: &str, prefix: &str, schema: &str) -> (Consumer, String) {
        let mut child = saver(kind, prefix, schema)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start the saver: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut consumer = Consumer { child, lines };
        // started (every subscription in place) once the read side listens
        let line = consumer.wait_for("read side listening", Duration::from_secs(60));
        let address = line
            .split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in: {line}"))
            .to_string();
        (consumer, address)
    }

    fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("the saver never logged `{needle}`");
                }
            }
        }
    }
}

async fn counts(pool: &deadpool_postgres::Pool) -> store::Counts {
    store::counts(pool).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn end_to_end(kind: &str, port: u16) {
    if !reachable(port) {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "{kind} unreachable on port {port} in CI"
        );
        eprintln!("SKIPPED: {kind} unreachable on port {port} (scripts/brokers up)");
        return;
    }
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("e2e{run}.");
    let schema = format!("saver_e2e_{}_{run}", kind.replace('-', "_"));
    let url = std::env::var("SAVER_DATABASE_URL").unwrap_or_else(|_| store::DEFAULT_URL.into());
    let pool = store::pool(&url, &schema).unwrap_or_else(|e| panic!("{e}"));

    let (mut first, _) = Consumer::start(kind, &prefix, &schema);
    let mut publisher = saver(kind, &prefix, &schema)
        .args(["publish", "--count", &N.to_string(), "--rate", "200"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start the publisher: {e}"));

    // killed mid-stream: what it handled but had not acknowledged comes back
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts(&pool).await.report_events < N / 4 {
        assert!(
            Instant::now() < deadline,
            "the first consumer saved nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap_or_else(|e| panic!("kill: {e}"));
    let _ = first.child.wait();
    let at_kill = counts(&pool).await;

    let (mut second, address) = Consumer::start(kind, &prefix, &schema);
    let published = publisher.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(published.success(), "publish failed: {published:?}");
    let expected = store::Counts {
        report_events: N,
        user_reports: N,
        sensor_data: 4 * N,
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut now = counts(&pool).await;
    while now != expected {
        assert!(
            Instant::now() < deadline && now.report_events <= N && now.sensor_data <= 4 * N,
            "{kind}: rows {now:?}, expected {expected:?} (at the kill: {at_kill:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = counts(&pool).await;
    }
    // and no late duplicate after a while
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        counts(&pool).await,
        expected,
        "{kind}: rows changed after settling"
    );

    let averages: Vec<store::Average> = serde_json::from_str(&transport_examples::http_get(
        &address,
        "/averages?bucket=3600",
    ))
    .unwrap();
    let readings: i64 = averages.iter().map(|average| average.readings).sum();
    assert_eq!(readings, 4 * N, "{averages:?}");
    assert_eq!(
        averages
            .iter()
            .map(|a| a.sensor_id.as_str())
            .collect::<std::collections::BTreeSet<_>>(),
        ["sensor-0", "sensor-1", "sensor-2", "sensor-3"]
            .into_iter()
            .collect()
    );
    // what the second consumer was handed again and found saved already
    let again = second
        .lines
        .try_iter()
        .filter(|line| line.contains("saved") && line.contains("new=false"))
        .count();
    println!(
        "{kind}: {at_kill:?} at the kill; then exactly {expected:?} ({again} deliveries found already saved)"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status();
    second.wait_for("stopped", Duration::from_secs(30));
    let exit = second.child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(exit.success(), "{exit:?}");
    if let Ok(client) = pool.get().await {
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}

#[tokio::test]
async fn on_redis_streams_a_killed_consumer_leaves_exactly_n_rows() {
    end_to_end("redis-streams", 6379).await;
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn on_kafka_a_killed_consumer_leaves_exactly_n_rows() {
    end_to_end("kafka", 9092).await;
}
