//! Throughput of the framework against each broker's raw client, in one run, as a ratio.
//!
//!     cargo run --release --example bench [--features kafka] -- [--messages N] [--rounds R] [--framework-only | --raw-only] [--no-trace-context] [--backends memory,redis-streams,jetstream,rabbitmq,mqtt,nats,redis,kafka,kafka-headers,inprocess,metrics,trace-context]
//!
//! `--rounds R` alternates framework and raw R times per backend and prints the medians.
//! `inprocess` is the framework alone on the embedded broker (typed deliveries per second:
//! publish, deliver, decode, handle, ack), the figure to compare with other frameworks'
//! in-memory brokers; `scripts/instructions` counts its instructions per delivery with
//! callgrind. `metrics` is the in-process drain with every metric recorded (a Prometheus
//! recorder) against it without a recorder: the ratio is the metrics' cost.
//! `trace-context` is the in-process drain with W3C trace context carried (the default)
//! against `[publisher] trace_context = false`.
//!
//! Each side drains the same backlog of small JSON messages: decode into a typed value,
//! count it, acknowledge it. The framework side is an annotated subscriber in a group on
//! an App; the raw side is the client used by hand the way a careful author would
//! (batched reads, batched `XACK` on Redis, pipelined acks on JetStream). The backlog is
//! written before the clock starts (the in-memory broker keeps nothing for absent
//! subscribers, so there publish and drain are timed together, on both sides). On a
//! broker, each side is timed from its first message handled to its last: connecting,
//! subscribing and joining a group are start-up, done once, not the draining compared. On
//! JetStream and Redis streams both backlogs are written by the raw client in a child
//! process (`--fill-jetstream`, `--fill`), with what the framework's publisher writes
//! (`content-type`, a generated message id), so that `--framework-only` under callgrind
//! counts the framework's consume path alone.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use transport::{App, Config};

#[path = "bench/workload.rs"]
mod workload;
use workload::{Counter, channel_drain, reading};

#[derive(Debug, Serialize, Deserialize)]
pub struct Reading {
    pub sensor: u32,
    pub humidity: f64,
    pub temperature: f64,
}

#[transport::subscriber(topic = "bench.readings", group = "bench")]
async fn on_reading(reading: Reading) {
    Counter::global().hit(&reading);
}

struct Measured {
    framework: f64,
    raw: f64,
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// A raw side's clock on the broker rows: from its first message handled to its last, as
/// the framework side's (`Counter::since_first`). Connecting, subscribing and joining a
/// group are each side's start-up, done once; what a row compares is the draining.
#[derive(Default)]
struct FirstToLast(Option<Instant>);

impl FirstToLast {
    /// One message handled.
    fn handled(&mut self) {
        if self.0.is_none() {
            self.0 = Some(Instant::now());
        }
    }

    /// From the first message handled until now.
    fn elapsed(&self) -> Duration {
        self.0.map_or(Duration::ZERO, |first| first.elapsed())
    }
}

/// The defaults, as a user gets them; the in-process queue holds the whole backlog.
fn config(kind: &str, prefix: &str, n: u64) -> Config {
    let mut config = Config::from_toml(&format!(
        "[broker]\nkind = \"{kind}\"\nname = \"bench\"\ntopic_prefix = \"{prefix}\"\nqueue_capacity = {}",
        n.max(65_536)
    ))
    .unwrap_or_else(|e| panic!("bench config: {e}"));
    if TRACE_CONTEXT_OFF.load(Ordering::Relaxed) {
        config.publisher.trace_context = false;
    }
    config
}

/// The framework's drain of `n` messages: the backlog written through the framework's
/// own publisher before the clock when `fill`, else published inside it.
async fn framework_drain(kind: &str, prefix: &str, n: u64, fill: bool) -> Duration {
    if fill {
        let producer = App::new(config(kind, prefix, n))
            .select(|_| false)
            .start()
            .await
            .unwrap_or_else(|e| panic!("producer: {e}"));
        for i in 0..n {
            producer
                .publisher()
                .publish("bench.readings", &reading(i))
                .await
                .unwrap_or_else(|e| panic!("publish: {e}"));
        }
        producer.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }
    framework_consume(kind, prefix, n, !fill).await
}

/// The framework's drain of `n` messages: of a backlog already there, timed from the
/// first message handled to the last (as the raw sides are); with `publish_timed`
/// (in-process) the App publishes it inside the clock, timed from the App's start.
async fn framework_consume(kind: &str, prefix: &str, n: u64, publish_timed: bool) -> Duration {
    let counter = Counter::global();
    counter.reset(n);
    let done = counter.done.notified();
    tokio::pin!(done);
    done.as_mut().enable();
    let started = Instant::now();
    let app = App::new(config(kind, prefix, n))
        .start()
        .await
        .unwrap_or_else(|e| panic!("app: {e}"));
    if publish_timed {
        for i in 0..n {
            app.publisher()
                .publish("bench.readings", &reading(i))
                .await
                .unwrap_or_else(|e| panic!("publish: {e}"));
        }
    }
    done.await;
    let elapsed = if publish_timed {
        started.elapsed()
    } else {
        counter.since_first()
    };
    app.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    elapsed
}

/// `metrics`: the in-process drain with every counter, gauge and histogram recorded (a
/// Prometheus recorder, registered for that App alone) against the same drain without a
/// recorder: the ratio is what recording metrics costs on the hot path.
async fn metrics_overhead(n: u64) -> Measured {
    let recorder = transport::observe::prometheus_builder().build_recorder();
    let on = {
        // the App's handles are registered with the recorder in scope when it starts
        let _recorder = metrics::set_default_local_recorder(&recorder);
        framework_drain("memory", "", n, false).await
    };
    let received = recorder.handle().render();
    assert!(
        received.contains("transport_handled_total"),
        "nothing was recorded:\n{received}"
    );
    if framework_only() {
        return alone(n, on);
    }
    let off = framework_drain("memory", "", n, false).await;
    Measured {
        framework: rate(n, on),
        raw: rate(n, off),
    }
}

/// `trace-context`: the in-process drain with `[publisher] trace_context` on (the default:
/// every publish carries a `traceparent`, every delivery parses it and runs its handler
/// inside it) against it off.
async fn trace_context_overhead(n: u64) -> Measured {
    let on = framework_drain("memory", "", n, false).await;
    if framework_only() {
        return alone(n, on);
    }
    TRACE_CONTEXT_OFF.store(true, Ordering::Relaxed);
    let off = framework_drain("memory", "", n, false).await;
    TRACE_CONTEXT_OFF.store(false, Ordering::Relaxed);
    Measured {
        framework: rate(n, on),
        raw: rate(n, off),
    }
}

/// Turns `publisher.trace_context` off in [`config`] (the `trace-context` row's other side).
static TRACE_CONTEXT_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn inprocess(n: u64) -> Measured {
    let framework = framework_drain("memory", "", n, false).await;
    alone(n, framework)
}

/// `--framework-only`: the raw side is skipped (for counting the framework's instructions
/// per message under callgrind).
static FRAMEWORK_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn framework_only() -> bool {
    FRAMEWORK_ONLY.load(Ordering::Relaxed)
}

/// `--raw-only`: the framework side is skipped (for counting the raw client's
/// instructions per message, to set beside the framework's).
static RAW_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn raw_only() -> bool {
    RAW_ONLY.load(Ordering::Relaxed)
}

/// The framework side of a row (its backlog written, drained, timed), unless `--raw-only`.
async fn framework_side(side: impl std::future::Future<Output = Duration>) -> Duration {
    if raw_only() {
        return Duration::ZERO;
    }
    side.await
}

fn alone(n: u64, framework: Duration) -> Measured {
    Measured {
        framework: rate(n, framework),
        raw: f64::NAN,
    }
}

async fn memory(n: u64) -> Measured {
    let framework = framework_side(framework_drain("memory", "", n, false)).await;
    if framework_only() {
        return alone(n, framework);
    }
    // raw: an in-process channel of encoded payloads, decoded by one consumer task
    let started = Instant::now();
    channel_drain(n).await;
    let raw = started.elapsed();
    Measured {
        framework: rate(n, framework),
        raw: rate(n, raw),
    }
}

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Writes `n` readings to `stream` with the raw client (pipelined `XADD`), each entry as
/// the framework's publisher writes it: `payload`, `content-type`, `message-id`.
async fn fill_stream(stream: &str, n: u64) {
    let client = redis::Client::open(REDIS_URL).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    const CHUNK: u64 = 10_000;
    let mut i = 0;
    while i < n {
        let mut pipe = redis::pipe();
        for i in i..(i + CHUNK).min(n) {
            let body = serde_json::to_vec(&reading(i)).unwrap_or_default();
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("payload")
                .arg(body)
                .arg("content-type")
                .arg("application/json")
                .arg("message-id")
                .arg(transport::message_id().as_str())
                .ignore();
        }
        let _: () = pipe
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        i += CHUNK;
    }
}

/// Fills `stream` from a child process (`bench --fill STREAM --messages N`), so that a
/// callgrind run of this one (which does not follow children) counts the drain alone.
async fn fill_stream_aside(stream: &str, n: u64) {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("own executable: {e}"));
    let mut child = std::process::Command::new(exe);
    child
        .arg("--fill")
        .arg(stream)
        .arg("--messages")
        .arg(n.to_string());
    let status = tokio::task::spawn_blocking(move || child.status())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("fill: {e}"));
    assert!(status.success(), "fill: {status}");
}

async fn redis_streams(n: u64, run: &str) -> Measured {
    let prefix = format!("bench{run}.");
    // Both backlogs are written the same way before either clock starts: the framework
    // side is measured consuming, not publishing.
    let framework = framework_side(async {
        fill_stream_aside(&format!("{prefix}bench.readings"), n).await;
        framework_consume("redis-streams", &prefix, n, false).await
    })
    .await;
    let client = redis::Client::open(REDIS_URL).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if framework_only() {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(format!("{prefix}bench.readings"))
            .query_async(&mut conn)
            .await;
        return alone(n, framework);
    }

    let stream = format!("{prefix}raw");
    fill_stream_aside(&stream, n).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut clock = FirstToLast::default();
    let mut seen = 0;
    while seen < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(512)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut ids = Vec::new();
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            let Some(redis::Value::BulkString(body)) = entry.map.get("payload") else {
                continue;
            };
            let reading: Reading = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}"));
            std::hint::black_box(&reading);
            clock.handled();
            ids.push(entry.id);
            seen += 1;
        }
        if !ids.is_empty() {
            let _: i64 = redis::cmd("XACK")
                .arg(&stream)
                .arg("g")
                .arg(&ids)
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let raw = clock.elapsed();
    let _: Result<i64, _> = redis::cmd("DEL")
        .arg(&stream)
        .arg(format!("{prefix}bench.readings"))
        .query_async(&mut conn)
        .await;
    Measured {
        framework: rate(n, framework),
        raw: rate(n, raw),
    }
}

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn fail<T>(error: lapin::Error) -> T {
    panic!("rabbitmq: {error}")
}

async fn amqp_channel() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(fail);
    let channel = connection.create_channel().await.unwrap_or_else(fail);
    (connection, channel)
}

/// Writes `n` readings with the raw client into durable queue `queue`, bound to the
/// framework's exchange by `routing_key`, as the framework's publisher writes them
/// (persistent, `content_type`, a generated `message_id`); waits for every confirm.
async fn fill_amqp_here(queue: &str, routing_key: &str, n: u64) {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let (connection, channel) = amqp_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap_or_else(fail);
    channel
        .exchange_declare(
            "transport".into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(fail);
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(fail);
    channel
        .queue_bind(
            queue.into(),
            "transport".into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(fail);
    let mut confirms = Vec::with_capacity(1024);
    for i in 0..n {
        let body = serde_json::to_vec(&reading(i)).unwrap_or_default();
        let properties = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(transport::message_id().as_str().into());
        confirms.push(
            channel
                .basic_publish(
                    "transport".into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .unwrap_or_else(fail),
        );
        if confirms.len() == 1024 || i + 1 == n {
            for confirm in confirms.drain(..) {
                confirm.await.unwrap_or_else(fail);
            }
        }
    }
    let _ = connection.close(200, "filled".into()).await;
}

/// `fill_amqp_here` in a child process (`bench --fill-amqp QUEUE ROUTING_KEY N`): a
/// callgrind run of this one counts the drain alone.
async fn fill_amqp(queue: &str, routing_key: &str, n: u64) {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("own executable: {e}"));
    let mut child = std::process::Command::new(exe);
    child
        .arg("--fill-amqp")
        .arg(queue)
        .arg(routing_key)
        .arg(n.to_string());
    let status = tokio::task::spawn_blocking(move || child.status())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("fill: {e}"));
    assert!(status.success(), "fill: {status}");
}

async fn delete_queues(queues: &[&str]) {
    let (connection, channel) = amqp_channel().await;
    for queue in queues {
        let _ = channel
            .queue_delete(
                (*queue).into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}

async fn rabbitmq(n: u64, run: &str) -> Measured {
    use futures_util::StreamExt;
    use lapin::options::*;
    let prefix = format!("bench{run}.");
    let topic = format!("{prefix}bench.readings");
    let group_queue = format!("{topic}#bench");
    let framework = framework_side(async {
        fill_amqp(&group_queue, &topic, n).await;
        framework_consume("rabbitmq", &prefix, n, false).await
    })
    .await;
    if framework_only() {
        delete_queues(&[&group_queue]).await;
        return alone(n, framework);
    }
    // raw: prefetch 1024, one `multiple` ack per 512 deliveries
    let raw_queue = format!("{prefix}raw");
    fill_amqp(&raw_queue, &raw_queue, n).await;
    let (connection, channel) = amqp_channel().await;
    let mut clock = FirstToLast::default();
    channel
        .basic_qos(1024, BasicQosOptions::default())
        .await
        .unwrap_or_else(fail);
    let mut consumer = channel
        .basic_consume(
            raw_queue.as_str().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_or_else(fail);
    let mut seen = 0;
    while seen < n {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery.unwrap_or_else(fail);
        let reading: Reading =
            serde_json::from_slice(&delivery.data).unwrap_or_else(|e| panic!("{e}"));
        std::hint::black_box(&reading);
        clock.handled();
        seen += 1;
        if seen % 512 == 0 || seen == n {
            channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await
                .unwrap_or_else(fail);
        }
    }
    let raw = clock.elapsed();
    let _ = connection.close(200, "done".into()).await;
    delete_queues(&[&group_queue, &raw_queue]).await;
    Measured {
        framework: rate(n, framework),
        raw: rate(n, raw),
    }
}

/// MQTT keeps nothing for a subscriber that is not there: both sides publish and drain
/// inside the clock, the framework through its publisher (each publish confirmed by its
/// PUBACK, 256 at a time), the raw side with a second rumqttc client (pipelined QoS 1).
/// The framework's side on a broker that keeps nothing for absent subscribers (MQTT
/// clean sessions, NATS core, Redis pub/sub): the App starts, then publishes `n` readings
/// (256 at a time where a publish waits for the broker, one after the other on NATS core,
/// as the raw sides do) while its subscriber drains them; timed from the first one handled
/// to the last. At-most-once brokers may drop under load: after `LIVE_PATIENCE`
/// without the last one, the bench stops and says how many arrived.
async fn framework_live(kind: &str, prefix: &str, n: u64) -> Duration {
    use futures_util::StreamExt;
    let counter = Counter::global();
    counter.reset(n);
    let done = counter.done.notified();
    tokio::pin!(done);
    done.as_mut().enable();
    let mut config = config(kind, prefix, n);
    if kind == "redis" {
        // Redis pub/sub hands a subscriber what it is sent, and the framework queues up
        // to `prefetch` of it, dropping the rest (at-most-once, counted): the queue is
        // made to hold the whole burst, as the raw client's socket buffer does
        config.subscriber.prefetch = usize::try_from(n).unwrap_or(usize::MAX);
    }
    let app = App::new(config)
        .start()
        .await
        .unwrap_or_else(|e| panic!("app: {e}"));
    let publisher = app.publisher().clone();
    // published from a task of its own, as the raw sides do (on the bench's main thread,
    // every wait for the broker parked and woke that thread: ~0.5 futex calls a message)
    let nats = kind == "nats";
    let publishing = tokio::spawn(async move {
        if nats {
            // a NATS core publish is done once the client has it: a plain loop, as the
            // raw side's (the others wait for the broker, so both sides keep 256 in flight)
            for i in 0..n {
                publisher
                    .publish("bench.readings", &reading(i))
                    .await
                    .unwrap_or_else(|e| panic!("publish: {e}"));
            }
        } else {
            futures_util::stream::iter(0..n)
                .map(|i| {
                    let publisher = publisher.clone();
                    async move { publisher.publish("bench.readings", &reading(i)).await }
                })
                .buffer_unordered(256)
                .for_each(|published| {
                    published.unwrap_or_else(|e| panic!("publish: {e}"));
                    std::future::ready(())
                })
                .await;
        }
    });
    publishing
        .await
        .unwrap_or_else(|e| panic!("publishing: {e}"));
    if tokio::time::timeout(LIVE_PATIENCE, done).await.is_err() {
        lost(kind, "framework", counter.seen.load(Ordering::Relaxed), n);
    }
    let framework = counter.since_first();
    app.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    framework
}

/// How long a live drain may go without finishing before the bench calls messages lost.
const LIVE_PATIENCE: Duration = Duration::from_secs(30);

/// The raw side's drain on a broker that keeps no backlog: decodes `n` messages of
/// `messages`, ending the bench if one does not come within `LIVE_PATIENCE`; timed from
/// the first one to the last.
async fn drain_live<S>(
    backend: &str,
    mut messages: S,
    n: u64,
    payload: fn(&S::Item) -> &[u8],
) -> Duration
where
    S: futures_util::Stream + Unpin,
{
    let mut clock = FirstToLast::default();
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout(LIVE_PATIENCE, messages.next()).await {
            Ok(Some(message)) => {
                let reading: Reading =
                    serde_json::from_slice(payload(&message)).unwrap_or_else(|e| panic!("{e}"));
                std::hint::black_box(&reading);
                clock.handled();
                seen += 1;
            }
            _ => lost(backend, "raw", seen, n),
        }
    }
    clock.elapsed()
}

/// Ends the bench: an at-most-once broker dropped messages, so no rate would be true.
fn lost(backend: &str, side: &str, seen: u64, n: u64) -> ! {
    eprintln!(
        "{backend} ({side}): {seen} of {n} messages arrived within {LIVE_PATIENCE:?}; the broker dropped the rest (at-most-once): try fewer --messages"
    );
    std::process::exit(1);
}

async fn mqtt(n: u64, run: &str) -> Measured {
    let prefix = format!("bench{run}.");
    let framework = framework_side(framework_live("mqtt", &prefix, n)).await;
    if framework_only() {
        return alone(n, framework);
    }

    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let topic = format!("bench{run}/raw");
    let mut options = MqttOptions::new(format!("bench-raw-sub-{run}"), "127.0.0.1", 1883);
    options
        .set_manual_acks(true)
        .set_receive_maximum(Some(1024))
        .set_max_packet_size(Some(1 << 20));
    let (subscriber, mut events) = AsyncClient::new(options, 1024);
    // a shared subscription, as the framework's group is
    subscriber
        .subscribe(format!("$share/raw/{topic}"), QoS::AtLeastOnce)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("mqtt: {e}"),
        }
    }
    let mut clock = FirstToLast::default();
    let mut options = MqttOptions::new(format!("bench-raw-pub-{run}"), "127.0.0.1", 1883);
    options.set_max_packet_size(Some(1 << 20));
    let (producer, mut producer_events) = AsyncClient::new(options, 1024);
    let pump = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            match producer_events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("mqtt: {e}"),
            }
        }
    });
    let sending = tokio::spawn(async move {
        for i in 0..n {
            let body = serde_json::to_vec(&reading(i)).unwrap_or_default();
            // what the framework's publisher writes: a content type, the id as a property
            let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                content_type: Some("application/json".to_string()),
                user_properties: vec![(
                    transport::backend::mqtt::ID_PROPERTY.to_string(),
                    transport::message_id().to_string(),
                )],
                ..Default::default()
            };
            producer
                .publish_with_properties(topic.clone(), QoS::AtLeastOnce, false, body, properties)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        producer
    });
    let mut seen = 0;
    while seen < n {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let reading: Reading =
                    serde_json::from_slice(&publish.payload).unwrap_or_else(|e| panic!("{e}"));
                std::hint::black_box(&reading);
                clock.handled();
                // the request queue full (this task is the one that empties it): the ack
                // waits for room on a task of its own, as the framework's acker does
                if let Err(rumqttc::v5::ClientError::TryRequest(_)) = subscriber.try_ack(&publish) {
                    let subscriber = subscriber.clone();
                    tokio::spawn(async move {
                        subscriber
                            .ack(&publish)
                            .await
                            .unwrap_or_else(|e| panic!("{e}"))
                    });
                }
                seen += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("mqtt: {e}"),
        }
    }
    let raw = clock.elapsed();
    let _ = pump.await;
    if let Ok(producer) = sending.await {
        let _ = producer.disconnect().await;
    }
    let _ = subscriber.disconnect().await;
    Measured {
        framework: rate(n, framework),
        raw: rate(n, raw),
    }
}

const NATS_URL: &str = "nats://127.0.0.1:4222";

async fn nats_core(n: u64, run: &str) -> Measured {
    let prefix = format!("bench{run}.");
    let framework = framework_side(framework_live("nats", &prefix, n)).await;
    if framework_only() {
        return alone(n, framework);
    }
    // raw: a queue-group subscriber (as the framework's group is) decoding each message,
    // and a publisher on the same client, flushed at the end, writing what the framework's
    // publisher writes (`content-type`, a message id)
    let client = async_nats::connect(NATS_URL)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let subject = format!("{prefix}raw");
    let subscriber = client
        .queue_subscribe(subject.clone(), "raw".to_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let publisher = client.clone();
    let sending = tokio::spawn(async move {
        for i in 0..n {
            let body = serde_json::to_vec(&reading(i)).unwrap_or_default();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("content-type", "application/json");
            headers.insert(
                transport::backend::nats::ID_HEADER,
                transport::message_id().as_str(),
            );
            publisher
                .publish_with_headers(subject.clone(), headers, body.into())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        publisher.flush().await.unwrap_or_else(|e| panic!("{e}"));
    });
    fn payload(message: &async_nats::Message) -> &[u8] {
        &message.payload
    }
    let raw = drain_live("nats", subscriber, n, payload).await;
    let _ = sending.await;
    Measured {
        framework: rate(n, framework),
        raw: rate(n, raw),
    }
}

async fn redis_pubsub(n: u64, run: &str) -> Measured {
    let prefix = format!("bench{run}.");
    let framework = framework_side(framework_live("redis", &prefix, n)).await;
    if framework_only() {
        return alone(n, framework);
    }
    // raw: a subscriber connection decoding each message, and PUBLISH 256 at a time on a
    // multiplexed connection (as the framework's publisher is driven here)
    let client = redis::Client::open(REDIS_URL).unwrap_or_else(|e| panic!("{e}"));
    let channel = format!("{prefix}raw");
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    pubsub
        .subscribe(&channel)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sending = tokio::spawn(async move {
        futures_util::stream::iter(0..n)
            .map(|i| {
                let mut connection = connection.clone();
                let channel = channel.clone();
                async move {
                    let body = serde_json::to_vec(&reading(i)).unwrap_or_default();
                    redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(body)
                        .query_async::<i64>(&mut connection)
                        .await
                }
            })
            .buffer_unordered(256)
            .for_each(|published| {
                published.unwrap_or_else(|e| panic!("{e}"));
                std::future::ready(())
            })
            .await;
    });
    fn payload(message: &redis::Msg) -> &[u8] {
        message.get_payload_bytes()
    }
    let raw = drain_live("redis", pubsub.on_message(), n, payload).await;
    let _ = sending.await;
    Measured {
        framework: rate(n, framework),
        raw: rate(n, raw),
    }
}

/// Writes a backlog of `n` readings to `subject` with the raw client, into stream
/// `stream` (created as the framework creates its own: file storage, 7 days, 1 GiB),
/// with the headers the framework's publisher writes (`content-type`, a generated
/// `Nats-Msg-Id`), awaiting the publish acks in batches of 256.
///
/// It runs in a child process (`bench --fill-jetstream STREAM SUBJECT N`), so that under
/// callgrind (which does not follow children) only the consuming side is counted.
async fn fill_jetstream(stream: &str, subject: &str, n: u64) {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("the bench's own path: {e}"));
    let (stream, subject) = (stream.to_string(), subject.to_string());
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["--fill-jetstream", &stream, &subject, &n.to_string()])
            .status()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("fill: {e}"));
    assert!(status.success(), "fill: {status}");
}

/// The child's side of [`fill_jetstream`].
async fn fill_jetstream_here(stream: &str, subject: &str, n: u64) {
    let client = async_nats::connect(NATS_URL)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: stream.to_string(),
        subjects: vec![subject.to_string()],
        max_age: Duration::from_secs(7 * 24 * 3600),
        max_bytes: 1 << 30,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut acks = Vec::with_capacity(256);
    for i in 0..n {
        let body = serde_json::to_vec(&reading(i)).unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("content-type", "application/json");
        headers.insert("Nats-Msg-Id", transport::message_id().as_str());
        acks.push(
            js.publish_with_headers(subject.to_string(), headers, body.into())
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        if acks.len() >= 256 {
            for ack in acks.drain(..) {
                ack.await.unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.unwrap_or_else(|e| panic!("{e}"));
    }
}

async fn jetstream(n: u64, run: &str) -> Measured {
    let prefix = format!("bench{run}.");
    // the stream the framework would create for its topic (prefix included)
    let framework_stream = format!("TRANSPORT_{}bench_readings", prefix.replace('.', "_"));
    let framework = framework_side(async {
        fill_jetstream(&framework_stream, &format!("{prefix}bench.readings"), n).await;
        framework_consume("jetstream", &prefix, n, false).await
    })
    .await;
    let client = async_nats::connect(NATS_URL)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let js = async_nats::jetstream::new(client);
    if framework_only() {
        let _ = js.delete_stream(&framework_stream).await;
        return alone(n, framework);
    }

    // Named as long as the framework's (subject `<prefix>bench.readings`, stream
    // `TRANSPORT_<prefix>bench_readings`, durable `bench__<prefix>bench_readings`): every
    // delivery carries its subject and an ack subject holding stream and consumer names,
    // which the client parses byte by byte on both sides.
    let subject = format!("{prefix}rawjs.readings");
    let stream_name = format!("RAW_JS_ST_{}rawjs_readings", prefix.replace('.', "_"));
    let durable = format!("rawjs__{}rawjs_readings", prefix.replace('.', "_"));
    fill_jetstream(&stream_name, &subject, n).await;
    let stream = js
        .get_stream(&stream_name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(durable),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut clock = FirstToLast::default();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(512)
        .messages()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = 0;
    while seen < n {
        let Some(Ok(message)) = messages.next().await else {
            break;
        };
        let reading: Reading =
            serde_json::from_slice(&message.payload).unwrap_or_else(|e| panic!("{e}"));
        std::hint::black_box(&reading);
        clock.handled();
        message.ack().await.unwrap_or_else(|e| panic!("{e}"));
        seen += 1;
    }
    let raw = clock.elapsed();
    let _ = js.delete_stream(&stream_name).await;
    let _ = js.delete_stream(&framework_stream).await;
    Measured {
        framework: rate(n, framework),
        raw: rate(n, raw),
    }
}

#[cfg(feature = "kafka")]
const KAFKA_SERVERS: &str = "127.0.0.1:9092";

/// Writes `n` readings to `topic` with a raw producer (queued, then flushed), each with
/// what the framework's publisher writes (`content-type`, a message id).
#[cfg(feature = "kafka")]
fn fill_kafka(topic: &str, n: u64) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA_SERVERS)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap_or_else(|e| panic!("kafka producer: {e}"));
    for i in 0..n {
        let payload = serde_json::to_vec(&reading(i)).unwrap_or_default();
        let id = format!("bench-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "message-id",
                value: Some(id.as_str()),
            });
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .payload(&payload)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    // the queue is full: let deliveries drain
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("kafka flush: {e}"));
}

/// Kafka: both backlogs written by a raw producer before the clock; the framework drains
/// its group's, the raw consumer (the same librdkafka, one partition, offsets stored after
/// each handled message and committed in the background, as at-least-once needs) its own.
/// With `raw_reads_headers` (the `kafka-headers` row) the raw consumer also reads each
/// record's headers, as the framework does for the message id, content type and trace
/// context (librdkafka parses them on first request): the two rows set apart what that
/// read costs from the framework's own work.
#[cfg(feature = "kafka")]
async fn kafka(n: u64, run: &str, raw_reads_headers: bool) -> Measured {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let prefix = format!("bench{run}.");
    let topic = format!("{prefix}bench.readings");
    let raw_topic = format!("{prefix}raw");
    // written by a child process (`bench --fill-kafka TOPIC N`), so that under callgrind
    // (which does not follow children) only the consuming side is counted
    for (fill, topic) in [(!raw_only(), &topic), (!framework_only(), &raw_topic)] {
        if !fill {
            continue;
        }
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("own executable: {e}"));
        let mut child = std::process::Command::new(exe);
        child.arg("--fill-kafka").arg(topic).arg(n.to_string());
        let status = tokio::task::spawn_blocking(move || child.status())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("fill: {e}"));
        assert!(status.success(), "fill: {status}");
    }
    let framework = framework_side(framework_consume("kafka", &prefix, n, false)).await;
    if framework_only() {
        return alone(n, framework);
    }
    let mut clock = FirstToLast::default();
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA_SERVERS)
        .set("group.id", format!("{raw_topic}.raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .set("session.timeout.ms", "10000")
        // tuned as the framework is (librdkafka's 1 s default leaves a drain idle for
        // most of each second once its local queue has filled)
        .set("fetch.queue.backoff.ms", "50")
        .create()
        .unwrap_or_else(|e| panic!("kafka consumer: {e}"));
    consumer
        .subscribe(&[&raw_topic])
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let mut seen = 0;
    while seen < n {
        let record = consumer.recv().await.unwrap_or_else(|e| panic!("{e}"));
        let reading: Reading = serde_json::from_slice(record.payload().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        std::hint::black_box(&reading);
        if raw_reads_headers {
            use rdkafka::message::Headers as _;
            for header in record.headers().iter().flat_map(|headers| headers.iter()) {
                let value =
                    std::str::from_utf8(header.value.unwrap_or_default()).unwrap_or_default();
                std::hint::black_box((header.key, value));
            }
        }
        clock.handled();
        consumer
            .store_offset_from_message(&record)
            .unwrap_or_else(|e| panic!("{e}"));
        seen += 1;
    }
    let raw = clock.elapsed();
    Measured {
        framework: rate(n, framework),
        raw: rate(n, raw),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, stream, subject, n] = args.as_slice()
        && flag == "--fill-jetstream"
    {
        let n = n
            .parse()
            .unwrap_or_else(|e| panic!("--fill-jetstream {n}: {e}"));
        fill_jetstream_here(stream, subject, n).await;
        return;
    }
    #[cfg(feature = "kafka")]
    if let [flag, topic, n] = args.as_slice()
        && flag == "--fill-kafka"
    {
        let n = n
            .parse()
            .unwrap_or_else(|e| panic!("--fill-kafka {n}: {e}"));
        fill_kafka(topic, n);
        return;
    }
    if let [flag, queue, routing_key, n] = args.as_slice()
        && flag == "--fill-amqp"
    {
        let n = n.parse().unwrap_or_else(|e| panic!("--fill-amqp {n}: {e}"));
        fill_amqp_here(queue, routing_key, n).await;
        return;
    }
    if let [flag, stream, messages, n] = args.as_slice()
        && flag == "--fill"
        && messages == "--messages"
    {
        let n = n.parse().unwrap_or_else(|e| panic!("--fill: {n}: {e}"));
        fill_stream(stream, n).await;
        return;
    }
    let mut messages: u64 = 20_000;
    let mut rounds: usize = 1;
    let mut backends = vec![
        "memory".to_string(),
        "redis-streams".to_string(),
        "jetstream".to_string(),
        "rabbitmq".to_string(),
        "mqtt".to_string(),
        "nats".to_string(),
        "redis".to_string(),
    ];
    if cfg!(feature = "kafka") {
        backends.push("kafka".to_string());
        backends.push("kafka-headers".to_string());
    }
    let mut i = 0;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--messages", Some(n)) => {
                messages = n.parse().unwrap_or_else(|e| panic!("--messages {n}: {e}"));
                i += 2;
            }
            ("--rounds", Some(n)) => {
                rounds = n.parse().unwrap_or_else(|e| panic!("--rounds {n}: {e}"));
                i += 2;
            }
            ("--backends", Some(list)) => {
                backends = list.split(',').map(str::to_string).collect();
                i += 2;
            }
            ("--no-trace-context", _) => {
                TRACE_CONTEXT_OFF.store(true, Ordering::Relaxed);
                i += 1;
            }
            ("--framework-only", _) => {
                FRAMEWORK_ONLY.store(true, Ordering::Relaxed);
                i += 1;
            }
            ("--raw-only", _) => {
                RAW_ONLY.store(true, Ordering::Relaxed);
                i += 1;
            }
            (other, _) => {
                eprintln!(
                    "usage: bench [--messages N] [--rounds R] [--framework-only | --raw-only] [--no-trace-context] [--backends memory,redis-streams,jetstream,rabbitmq,mqtt,nats,redis,kafka,kafka-headers,inprocess,metrics,trace-context] (got `{other}`)"
                );
                std::process::exit(2);
            }
        }
    }
    let rounds = rounds.max(1);
    let run = format!("{}", std::process::id());
    println!(
        "{messages} small JSON messages per side; typed decode + ack; {rounds} round(s), medians\n"
    );
    println!(
        "{:<14} {:>16} {:>16} {:>8}",
        "backend", "framework msg/s", "raw msg/s", "ratio"
    );
    for backend in &backends {
        let mut framework = Vec::with_capacity(rounds);
        let mut raw = Vec::with_capacity(rounds);
        let mut ratios = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let run = format!("{run}r{round}");
            let result = match backend.as_str() {
                "memory" => memory(messages).await,
                "redis-streams" => redis_streams(messages, &run).await,
                "jetstream" => jetstream(messages, &run).await,
                "rabbitmq" => rabbitmq(messages, &run).await,
                "mqtt" => mqtt(messages, &run).await,
                "nats" => nats_core(messages, &run).await,
                "redis" => redis_pubsub(messages, &run).await,
                #[cfg(feature = "kafka")]
                "kafka" => kafka(messages, &run, false).await,
                #[cfg(feature = "kafka")]
                "kafka-headers" => kafka(messages, &run, true).await,
                #[cfg(not(feature = "kafka"))]
                "kafka" | "kafka-headers" => {
                    eprintln!(
                        "the kafka row needs the examples' `kafka` feature: --features kafka"
                    );
                    std::process::exit(2);
                }
                "inprocess" => inprocess(messages).await,
                "metrics" => metrics_overhead(messages).await,
                "trace-context" => trace_context_overhead(messages).await,
                other => {
                    eprintln!("unknown backend `{other}`");
                    std::process::exit(2);
                }
            };
            framework.push(result.framework);
            raw.push(result.raw);
            ratios.push(result.framework / result.raw);
        }
        let (framework, raw, ratio) = (median(framework), median(raw), median(ratios));
        if raw.is_nan() {
            println!("{backend:<14} {framework:>16.0} {:>16} {:>8}", "-", "-");
        } else {
            println!("{backend:<14} {framework:>16.0} {raw:>16.0} {ratio:>7.2}x");
        }
    }
}

/// The median (of the ratios per round for the ratio: each round's two sides ran back to
/// back, under the same conditions).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
