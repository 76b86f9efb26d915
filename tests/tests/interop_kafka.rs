//! Kafka against tansu (`scripts/brokers up`): interop with an independent client
//! (pure-Python `kafka-python`, installed by `scripts/brokers up`) both ways, and what
//! Kafka's partitions demand: order per partition while partitions run side by side,
//! and a rebalance while consuming that loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};
use transport::prelude::*;
use transport::{App, Config, Running};
use transport_tests::interop::{Order, Seen};
use transport_tests::{PATIENCE, init_tracing, receive, unique};

const SERVERS: &str = "127.0.0.1:9092";

fn config(prefix: &str, extra: &str) -> Config {
    Config::from_toml(&format!(
        "[broker]\nkind = \"kafka\"\nurl = \"kafka://{SERVERS}\"\ntopic_prefix = \"{prefix}\"\n\
         [broker.kafka]\nsession_timeout = \"6s\"\ncommit_interval = \"100ms\"\npartitions = 4\n{extra}"
    ))
    .expect("config")
}

/// Runs a Python snippet with `kafka-python`; its stdout.
fn python(script: &str) -> String {
    let output = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub struct Shop(pub UnboundedSender<Seen>);

#[transport::service]
impl Shop {
    #[subscriber(topic = "interop.kafka.orders", group = "shop")]
    async fn order(&self, order: Order, ctx: &Context) {
        let _ = self.0.send(Seen::of(order, ctx));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_python_record_reaches_a_typed_subscriber() {
    if !transport_tests::require_broker(9092, "kafka") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("kafka"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = App::new(config(&prefix, ""))
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx))
        .start()
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"));
    python(&format!(
        r#"
from kafka import KafkaProducer
producer = KafkaProducer(bootstrap_servers="{SERVERS}")
producer.send("{prefix}interop.kafka.orders", key=b"k-7", value=b'{{"id":7,"item":"tea"}}',
              headers=[("trace-id", b"t-1"), ("content-type", b"application/json"), ("message-id", b"m-7")]).get(timeout=20)
"#
    ));
    let seen = receive(&mut rx, 1).await.remove(0);
    assert_eq!(
        seen.order,
        Order {
            id: 7,
            item: "tea".into()
        }
    );
    assert_eq!(seen.key.as_deref(), Some("k-7"));
    assert_eq!(seen.id.as_deref(), Some("m-7"));
    assert_eq!(seen.headers.get("trace-id"), Some("t-1"));
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_reads_what_the_framework_publishes() {
    if !transport_tests::require_broker(9092, "kafka") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("kafka"));
    let app = App::new(config(&prefix, ""))
        .select(|_| false)
        .start()
        .await
        .expect("the app starts");
    app.publisher()
        .to("interop.kafka.audit")
        .header("trace-id", "t-2")
        .key("k-2")
        .id("m-2")
        .send(&Order {
            id: 8,
            item: "bread".into(),
        })
        .await
        .expect("published");
    let line = python(&format!(
        r#"
import json
from kafka import KafkaConsumer
consumer = KafkaConsumer("{prefix}interop.kafka.audit", bootstrap_servers="{SERVERS}",
                         auto_offset_reset="earliest", consumer_timeout_ms=20000)
for record in consumer:
    print(json.dumps({{"key": record.key.decode(), "value": json.loads(record.value),
                      "headers": {{k: v.decode() for k, v in record.headers}}}}))
    break
"#
    ));
    let got: serde_json::Value = serde_json::from_str(line.trim()).expect("one json line");
    assert_eq!(got["key"], "k-2");
    assert_eq!(got["value"], serde_json::json!({"id": 8, "item": "bread"}));
    assert_eq!(got["headers"]["trace-id"], "t-2");
    assert_eq!(got["headers"]["message-id"], "m-2");
    assert_eq!(got["headers"]["content-type"], "application/json");
    app.shutdown().await.expect("shutdown");
}

/// What a subscriber of the partition tests saw: (key, sequence number, app).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct Step {
    pub key: String,
    pub seq: u64,
}

pub struct Sequence {
    pub app: u32,
    pub seen: UnboundedSender<(u32, String, u64)>,
    pub running: AtomicUsize,
    pub peak: Mutex<usize>,
    /// How long each handler takes.
    pub pause: Duration,
}

#[transport::service]
impl Sequence {
    #[subscriber(topic = "interop.kafka.steps", group = "steps")]
    async fn step(&self, step: Step) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut peak = self.peak.lock().unwrap_or_else(|e| e.into_inner());
            *peak = (*peak).max(now);
        }
        tokio::time::sleep(self.pause).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        let _ = self.seen.send((self.app, step.key, step.seq));
    }
}

async fn start_sequence(
    prefix: &str,
    extra: &str,
    app: u32,
    seen: UnboundedSender<(u32, String, u64)>,
    pause: Duration,
) -> (Running, std::sync::Arc<Sequence>) {
    let service = std::sync::Arc::new(Sequence {
        app,
        seen,
        running: AtomicUsize::new(0),
        peak: Mutex::new(0),
        pause,
    });
    let running = App::new(config(prefix, extra))
        .select(|r| r.name == "Sequence::step")
        .service_arc(std::sync::Arc::clone(&service))
        .start()
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"));
    (running, service)
}

async fn publish_steps(app: &Running, keys: usize, per_key: u64) {
    for seq in 0..per_key {
        for key in 0..keys {
            let key = format!("k{key}");
            app.publisher()
                .to("interop.kafka.steps")
                .key(key.clone())
                .send(&Step { key, seq })
                .await
                .expect("published");
        }
    }
}

/// Keys map to partitions; with `concurrency = 4` the four partitions run side by
/// side, and each key's messages are handled in the order they were published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_run_side_by_side_and_each_in_order() {
    if !transport_tests::require_broker(9092, "kafka") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("kafka"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (app, service) = start_sequence(
        &prefix,
        "[subscriber]\nconcurrency = 4",
        1,
        tx,
        Duration::from_millis(5),
    )
    .await;
    publish_steps(&app, 8, 25).await;
    let seen = receive(&mut rx, 200).await;
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, key, seq) in seen {
        by_key.entry(key).or_default().push(seq);
    }
    for (key, seqs) in &by_key {
        assert_eq!(*seqs, (0..25).collect::<Vec<_>>(), "key {key} in order");
    }
    let peak = *service.peak.lock().unwrap();
    assert!(peak > 1, "partitions ran side by side (peak {peak})");
    app.shutdown().await.expect("shutdown");
}

/// A second member joins while the first consumes, then the first leaves: every
/// message is handled, and what is handled twice is at most what was in flight at a
/// hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_consuming_loses_nothing() {
    if !transport_tests::require_broker(9092, "kafka") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("kafka"));
    let extra = "[subscriber]\nconcurrency = 2\nprefetch = 8";
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (first, _) = start_sequence(&prefix, extra, 1, tx.clone(), Duration::from_millis(20)).await;
    const KEYS: usize = 8;
    const PER_KEY: u64 = 40;
    publish_steps(&first, KEYS, PER_KEY).await;
    let total = KEYS * PER_KEY as usize;
    let mut seen: Vec<(u32, String, u64)> = receive(&mut rx, 20).await;
    // a second member joins mid-stream: the partitions are shared out again
    let (second, _) = start_sequence(&prefix, extra, 2, tx, Duration::from_millis(20)).await;
    seen.extend(receive(&mut rx, 20).await);
    // the first leaves mid-stream: its partitions go to the second
    first.shutdown().await.expect("first shuts down");
    let distinct = |seen: &[(u32, String, u64)]| {
        seen.iter()
            .map(|(_, key, seq)| (key.clone(), *seq))
            .collect::<BTreeSet<_>>()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE * 6;
    while distinct(&seen).len() < total {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => seen.push(event),
            _ => break,
        }
    }
    let handled = distinct(&seen);
    assert_eq!(handled.len(), total, "nothing lost across the rebalance");
    // per member: `concurrency` running plus `prefetch` waiting, at each of two hand-overs
    let duplicates = seen.len() - handled.len();
    assert!(
        duplicates <= 2 * (2 + 8) * 2,
        "{duplicates} handled twice: more than was in flight"
    );
    assert!(
        seen.iter().any(|(app, _, _)| *app == 2),
        "the second member took partitions"
    );
    second.shutdown().await.expect("second shuts down");
}

pub struct Slow(pub UnboundedSender<u64>);

#[transport::service]
impl Slow {
    #[subscriber(topic = "interop.kafka.slow", group = "slow")]
    async fn step(&self, step: Step) {
        if step.seq == 0 {
            // longer than `max_poll_interval`, with a backlog waiting behind it
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let _ = self.0.send(step.seq);
    }
}

/// How many steps the `Slow` tests publish (step 0 takes 10 s, the rest wait behind it).
const SLOW_STEPS: u64 = 20;

async fn start_slow(
    prefix: &str,
    extra: &str,
    seen: UnboundedSender<u64>,
) -> Result<Running, transport::Error> {
    App::new(config(prefix, extra))
        .select(|r| r.name == "Slow::step")
        .service(Slow(seen))
        .start()
        .await
}

/// Publishes the `Slow` steps in order, all with one key (one partition).
async fn publish_slow_steps(app: &Running) {
    for seq in 0..SLOW_STEPS {
        app.publisher()
            .to("interop.kafka.slow")
            .key("one")
            .send(&Step {
                key: "one".into(),
                seq,
            })
            .await
            .expect("published");
    }
}

/// The steps handled, as they come: until every one was (step 0 takes 10 s), then
/// anything handled twice soon after the last.
async fn handled_slow_steps(rx: &mut mpsc::UnboundedReceiver<u64>) -> Vec<u64> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE * 4;
    while (seen.len() as u64) < SLOW_STEPS {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(seq)) => seen.push(seq),
            _ => break,
        }
    }
    while let Ok(Some(seq)) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        seen.push(seq);
    }
    seen
}

/// A handler that takes longer than `max.poll.interval.ms` while records wait: the reader,
/// with no room to hand them over, still polls librdkafka (its partitions paused), so the
/// member stays in its group and nothing is handled twice. (Without that polling
/// librdkafka takes the member out of the group; it joins again and reads the slow
/// message a second time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_poll_interval_keeps_its_member_in_the_group() {
    if !transport_tests::require_broker(9092, "kafka") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("kafka"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let extra = "max_poll_interval = \"7s\"\n[subscriber]\nprefetch = 1";
    let app = start_slow(&prefix, extra, tx)
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"));
    publish_slow_steps(&app).await;
    let seen = handled_slow_steps(&mut rx).await;
    assert_eq!(
        seen,
        (0..SLOW_STEPS).collect::<Vec<_>>(),
        "each handled once, in order"
    );
    app.shutdown().await.expect("shutdown");
}

/// Shutdown while the reader waits for room with its partitions paused (the handler slow,
/// a backlog behind it): the App stops once the running handler is done, and a member
/// started after it handles the rest: nothing read ahead or held back is lost, and nothing
/// is handled twice. The drain outlasts `max_poll_interval`: the reader goes on polling
/// (its partitions paused) until it ends, so the member stays in its group and the handled
/// step's offset is committed. (Had it stopped polling, librdkafka would take the member
/// out of the group mid-drain, the commit would fail and the second member would handle
/// that step again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_reader_waits_for_room_loses_nothing() {
    if !transport_tests::require_broker(9092, "kafka") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("kafka"));
    let extra = "max_poll_interval = \"6s\"\n[subscriber]\nprefetch = 1";
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = start_slow(&prefix, extra, tx.clone())
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"));
    publish_slow_steps(&first).await;
    // the first step takes 10 s: after a second without room the reader has paused; the
    // drain then lasts 8 s more, past `max_poll_interval`
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.shutdown().await.expect("the first shuts down");
    let second = start_slow(&prefix, extra, tx)
        .await
        .unwrap_or_else(|error| panic!("the second starts: {error}"));
    let mut seen = handled_slow_steps(&mut rx).await;
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..SLOW_STEPS).collect::<Vec<_>>(),
        "every step handled once, by one member or the other"
    );
    second.shutdown().await.expect("the second shuts down");
}
