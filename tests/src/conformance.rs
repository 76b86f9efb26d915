//! The backend conformance suite: one list of cases, written once against the backend
//! contract, run unchanged against every backend (memory included) on real broker
//! processes. Each backend's test module lists every case, marking those it cannot honour
//! as skipped with the reason (`conformance_suite!`); a test checks none is left out.
//!
//! In CI (`CI=true`) a case whose broker is unreachable fails instead of skipping.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use transport::dispatch::headers as dlq;
use transport::prelude::*;
use transport::{App, Config, Running};

use crate::broker::{PrivateBroker, Server};

/// Every case of the suite, by name.
pub const CASES: &[&str] = &[
    "round_trip",
    "many_messages",
    "fan_out",
    "competing_consumers",
    "two_groups_and_a_fan_out_subscriber",
    "headers_and_key",
    "ordering",
    "redelivery_after_error",
    "no_ack_on_panic",
    "dead_letter_after_max_attempts",
    "undecodable_payload",
    "many_topics",
    "large_payload",
    "oversized_payload_is_refused",
    "late_subscriber_sees_old_messages",
    "graceful_drain",
    "survives_broker_restart",
    "dead_letter_is_a_new_message",
    "dead_letter_publish_failing",
    "handler_timeout",
    "shutdown_while_broker_down",
    "invalid_topics_are_refused",
    "malformed_entry",
];

/// A backend under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// `broker.kind`.
    pub kind: &'static str,
    /// Its standard loopback port (0: in-process).
    pub port: u16,
    /// The server to run privately for restart tests.
    pub server: Option<Server>,
    /// Largest payload the broker takes by default.
    pub max_payload: usize,
    /// `broker.jetstream.storage` of the streams the backend creates.
    pub storage: &'static str,
}

impl Target {
    /// The embedded broker.
    pub fn memory() -> Self {
        Target {
            kind: "memory",
            port: 0,
            server: None,
            max_payload: 16 << 20,
            storage: "file",
        }
    }
    /// NATS core on 4222.
    pub fn nats() -> Self {
        Target {
            kind: "nats",
            port: 4222,
            server: Some(Server::Nats),
            max_payload: 1 << 20,
            storage: "file",
        }
    }
    /// JetStream on 4222.
    pub fn jetstream() -> Self {
        Target {
            kind: "jetstream",
            port: 4222,
            server: Some(Server::Nats),
            max_payload: 1 << 20,
            storage: "file",
        }
    }
    /// JetStream on 4222, with streams in memory: a server restart loses them.
    pub fn jetstream_memory() -> Self {
        Target {
            storage: "memory",
            ..Self::jetstream()
        }
    }
    /// Redis pub/sub on 6379.
    pub fn redis() -> Self {
        Target {
            kind: "redis",
            port: 6379,
            server: Some(Server::Redis),
            max_payload: 16 << 20,
            storage: "file",
        }
    }
    /// RabbitMQ on 5672.
    pub fn rabbitmq() -> Self {
        Target {
            kind: "rabbitmq",
            port: 5672,
            server: Some(Server::RabbitMq),
            max_payload: 16 << 20,
            storage: "file",
        }
    }
    /// MQTT 5 (Mosquitto) on 1883.
    pub fn mqtt() -> Self {
        Target {
            kind: "mqtt",
            port: 1883,
            server: Some(Server::Mosquitto),
            max_payload: 16 << 20,
            storage: "file",
        }
    }
    /// Kafka (tansu) on 9092: records up to librdkafka's default `message.max.bytes`.
    pub fn kafka() -> Self {
        Target {
            kind: "kafka",
            port: 9092,
            server: Some(Server::Tansu),
            max_payload: 1_000_000,
            storage: "file",
        }
    }
    /// nsqd at `NSQD_TCP_ADDRESS` (`127.0.0.1:<port>`): no registry ships nsqd, so a
    /// fresh machine has none and the NSQ cases skip, saying why, in CI too.
    pub fn nsq() -> Self {
        let port = std::env::var("NSQD_TCP_ADDRESS")
            .ok()
            .and_then(|address| address.rsplit_once(':')?.1.parse().ok())
            .unwrap_or(4150);
        Target {
            kind: "nsq",
            port,
            server: Some(Server::Nsqd),
            max_payload: 1 << 20,
            storage: "file",
        }
    }
    /// Redis streams on 6379.
    pub fn redis_streams() -> Self {
        Target {
            kind: "redis-streams",
            port: 6379,
            server: Some(Server::Redis),
            max_payload: 16 << 20,
            storage: "file",
        }
    }

    fn url(&self, port: u16) -> Option<String> {
        match self.server {
            Some(Server::Nats) => Some(format!("nats://127.0.0.1:{port}")),
            Some(Server::Redis | Server::RedisPersistent) => {
                Some(format!("redis://127.0.0.1:{port}"))
            }
            Some(Server::RabbitMq) => Some(format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
            Some(Server::Mosquitto) => Some(format!("mqtt://127.0.0.1:{port}")),
            Some(Server::Tansu) => Some(format!("kafka://127.0.0.1:{port}")),
            Some(Server::Nsqd) => Some(format!("nsq://127.0.0.1:{port}")),
            Some(Server::Nsqlookupd) | None => None,
        }
    }

    /// Writes, as a foreign producer could, an entry on `topic` that cannot be turned
    /// into a message; `None` where every entry the broker holds is a message.
    pub async fn write_malformed(&self, run: &Run, topic: &str) -> Option<()> {
        match self.kind {
            "redis-streams" => {
                let url = run.url.as_deref()?;
                let client = redis::Client::open(url).ok()?;
                let mut connection = client.get_multiplexed_async_connection().await.ok()?;
                // a field name that is not UTF-8, and no payload field
                let _: String = redis::cmd("XADD")
                    .arg(format!("{}{topic}", run.prefix))
                    .arg("*")
                    .arg(&b"bad\xff\xfename"[..])
                    .arg(&b"v\x00\xff"[..])
                    .query_async(&mut connection)
                    .await
                    .ok()?;
                Some(())
            }
            _ => None,
        }
    }

    /// Whether the broker answers; in CI an unreachable broker fails the test.
    pub fn reachable(&self) -> bool {
        if self.kind == "nsq" && std::env::var_os("NSQD_TCP_ADDRESS").is_none() {
            eprintln!(
                "SKIPPED: nsq: NSQD_TCP_ADDRESS is not set (no package registry ships nsqd; run one and set NSQD_TCP_ADDRESS=127.0.0.1:4150)"
            );
            return false;
        }
        self.port == 0 || crate::require_broker(self.port, self.kind)
    }
}

/// One test's isolation: its own topic prefix (and memory broker).
pub struct Run {
    /// Prepended to every topic on the wire.
    pub prefix: String,
    broker_name: String,
    url: Option<String>,
}

impl Run {
    /// A fresh run against the target's standard broker.
    pub fn new(target: &Target) -> Self {
        Self::at(target, target.url(target.port))
    }

    fn at(_target: &Target, url: Option<String>) -> Self {
        let id = crate::unique("c");
        Run {
            prefix: format!("{id}."),
            broker_name: id,
            url,
        }
    }

    /// The configuration of an App of this run, plus `extra` TOML lines under
    /// `[subscriber]` (which may open tables of their own); `extra` wins over the
    /// run's defaults.
    pub fn config(&self, target: &Target, extra: &str) -> Config {
        let url = self
            .url
            .as_ref()
            .map(|u| format!("url = \"{u}\"\n"))
            .unwrap_or_default();
        let base = format!(
            "[broker]\nkind = \"{kind}\"\n{url}name = \"{name}\"\ntopic_prefix = \"{prefix}\"\n\
             [broker.jetstream]\nack_wait = \"2s\"\nstorage = \"{storage}\"\n\
             [broker.redis]\nclaim_idle = \"1s\"\nclaim_interval = \"200ms\"\n\
             [broker.kafka]\nsession_timeout = \"6s\"\ncommit_interval = \"100ms\"\npartitions = 4\npublish_timeout = \"5s\"\n\
             [shutdown]\ndrain_timeout = \"10s\"\n\
             [subscriber]\nbackoff = \"20ms\"\nbackoff_max = \"200ms\"\nmax_attempts = 3\n",
            kind = target.kind,
            name = self.broker_name,
            prefix = self.prefix,
            storage = target.storage,
        );
        let parse = |text: &str| match text.parse::<toml::Table>() {
            Ok(table) => table,
            Err(error) => panic!("conformance config does not parse: {error}\n{text}"),
        };
        let mut table = parse(&base);
        merge(&mut table, parse(&format!("[subscriber]\n{extra}")));
        let text = toml::to_string(&table).unwrap_or_default();
        match Config::from_toml(&text) {
            Ok(config) => config,
            Err(error) => panic!("conformance config is invalid: {error}\n{text}"),
        }
    }

    /// Deletes what the run left on a persistent broker (streams).
    pub async fn cleanup(&self, target: &Target) {
        let Some(url) = &self.url else { return };
        match target.kind {
            "jetstream" => {
                let Ok(client) = async_nats::connect(url.as_str()).await else {
                    return;
                };
                let context = async_nats::jetstream::new(client);
                let wanted = format!("TRANSPORT_{}", self.prefix.replace('.', "_"));
                let mut names = context.stream_names();
                let mut doomed = Vec::new();
                while let Some(Ok(name)) = futures_util::StreamExt::next(&mut names).await {
                    if name.starts_with(&wanted) {
                        doomed.push(name);
                    }
                }
                for name in doomed {
                    let _ = context.delete_stream(&name).await;
                }
            }
            "redis-streams" => {
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    return;
                };
                let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                    return;
                };
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", self.prefix))
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<i64, _> = redis::cmd("DEL")
                        .arg(&keys)
                        .query_async(&mut connection)
                        .await;
                }
            }
            _ => {}
        }
    }
}

/// Merges `extra` into `table`, table by table; `extra`'s values win.
fn merge(table: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (table.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            (_, value) => {
                table.insert(key, value);
            }
        }
    }
}

/// What a probe handler saw.
#[derive(Clone, Debug)]
pub struct Event {
    /// Which handler.
    pub case: &'static str,
    /// Which App.
    pub app: u32,
    /// The payload's number (or length, for bytes).
    pub n: u64,
    /// Which attempt.
    pub attempt: u32,
    /// The headers seen.
    pub headers: Headers,
    /// The key seen.
    pub key: Option<String>,
}

/// A JSON payload for the decode case.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reading {
    /// Degrees.
    pub celsius: f64,
}

/// The service every case runs (a selection of its subscribers).
pub struct Probe {
    app: u32,
    events: UnboundedSender<Event>,
    slow: Duration,
}

impl Probe {
    fn record(&self, case: &'static str, n: u64, ctx: &Context) {
        let _ = self.events.send(Event {
            case,
            app: self.app,
            n,
            attempt: ctx.attempt(),
            headers: ctx.headers().clone(),
            key: ctx.key().map(str::to_string),
        });
    }
}

#[transport::service]
impl Probe {
    #[subscriber(topic = "conf.basic")]
    async fn basic(&self, n: u64, ctx: &Context) {
        self.record("basic", n, ctx);
    }
    #[subscriber(topic = "conf.many", group = "many")]
    async fn many(&self, n: u64, ctx: &Context) {
        self.record("many", n, ctx);
    }
    #[subscriber(topic = "conf.fanout")]
    async fn fanout(&self, n: u64, ctx: &Context) {
        self.record("fanout", n, ctx);
    }
    #[subscriber(topic = "conf.workers", group = "workers")]
    async fn workers(&self, n: u64, ctx: &Context) {
        self.record("workers", n, ctx);
    }
    #[subscriber(topic = "conf.shared", group = "alpha")]
    async fn alpha(&self, n: u64, ctx: &Context) {
        self.record("alpha", n, ctx);
    }
    #[subscriber(topic = "conf.shared", group = "beta")]
    async fn beta(&self, n: u64, ctx: &Context) {
        self.record("beta", n, ctx);
    }
    #[subscriber(topic = "conf.shared")]
    async fn watcher(&self, n: u64, ctx: &Context) {
        self.record("watcher", n, ctx);
    }
    #[subscriber(topic = "conf.ordered", group = "ordered")]
    async fn ordered(&self, n: u64, ctx: &Context) {
        self.record("ordered", n, ctx);
    }
    #[subscriber(topic = "conf.flaky", group = "flaky")]
    async fn flaky(&self, n: u64, ctx: &Context) -> Result<(), Error> {
        self.record("flaky", n, ctx);
        if ctx.attempt() == 1 {
            return Err(Error::msg("first attempts fail"));
        }
        Ok(())
    }
    #[subscriber(topic = "conf.flaky.all")]
    async fn flaky_all(&self, n: u64, ctx: &Context) -> Result<(), Error> {
        self.record("flaky.all", n, ctx);
        if ctx.attempt() == 1 {
            return Err(Error::msg("first attempts fail"));
        }
        Ok(())
    }
    #[subscriber(topic = "conf.panicky", group = "panicky")]
    async fn panicky(&self, n: u64, ctx: &Context) {
        self.record("panicky", n, ctx);
        if ctx.attempt() == 1 {
            panic!("first attempts panic");
        }
    }
    #[subscriber(topic = "conf.doomed", group = "doomed")]
    async fn doomed(&self, n: u64, ctx: &Context) -> Result<(), Error> {
        self.record("doomed", n, ctx);
        // A multi-line error, as a failed assertion gives: headers carry it on one line.
        Err(Error::msg(format!("cannot handle {n}:\r\n  giving up")))
    }
    #[subscriber(topic = "conf.typed", group = "typed")]
    async fn typed(&self, reading: Reading, ctx: &Context) {
        self.record("typed", reading.celsius as u64, ctx);
    }
    #[subscriber(topic = "conf.big", group = "big", codec = "bytes")]
    async fn big(&self, payload: Bytes, ctx: &Context) {
        let sum = payload.iter().fold(0u64, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(u64::from(*b))
        });
        self.record("big", payload.len() as u64, ctx);
        self.record("big.sum", sum, ctx);
    }
    #[subscriber(topic = "conf.late", group = "late")]
    async fn late(&self, n: u64, ctx: &Context) {
        self.record("late", n, ctx);
    }
    #[subscriber(topic = "conf.slow", group = "slow")]
    async fn slow(&self, n: u64, ctx: &Context) {
        self.record("slow.start", n, ctx);
        tokio::time::sleep(self.slow).await;
        self.record("slow.end", n, ctx);
    }
    #[subscriber(topic = "conf.hung", group = "hung")]
    async fn hung(&self, n: u64, ctx: &Context) {
        self.record("hung", n, ctx);
        if ctx.attempt() == 1 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    #[subscriber(topic = "conf.restart", group = "restart")]
    async fn restart(&self, n: u64, ctx: &Context) {
        self.record("restart", n, ctx);
    }
    #[subscriber(topic = "conf.topic.0")]
    async fn topic0(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
    #[subscriber(topic = "conf.topic.1")]
    async fn topic1(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
    #[subscriber(topic = "conf.topic.2")]
    async fn topic2(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
    #[subscriber(topic = "conf.topic.3")]
    async fn topic3(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
    #[subscriber(topic = "conf.topic.4")]
    async fn topic4(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
    #[subscriber(topic = "conf.topic.5")]
    async fn topic5(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
    #[subscriber(topic = "conf.topic.6")]
    async fn topic6(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
    #[subscriber(topic = "conf.topic.7")]
    async fn topic7(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
    #[subscriber(topic = "conf.topic.8")]
    async fn topic8(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
    #[subscriber(topic = "conf.topic.9")]
    async fn topic9(&self, n: u64, ctx: &Context) {
        self.record("topic", n, ctx);
    }
}

/// Starts an App of `run` with the named probe subscribers.
pub async fn start(
    config: Config,
    app: u32,
    subscribers: &[&'static str],
    events: UnboundedSender<Event>,
    slow: Duration,
) -> Running {
    crate::init_tracing();
    let names: Vec<String> = subscribers.iter().map(|s| format!("Probe::{s}")).collect();
    let started = App::new(config)
        .select(move |r| names.iter().any(|n| n == r.name))
        .service(Probe { app, events, slow })
        .start()
        .await;
    match started {
        Ok(running) => running,
        Err(error) => panic!("app failed to start: {error}"),
    }
}

/// Receives `count` events, failing the test after `within`.
pub async fn events(
    rx: &mut UnboundedReceiver<Event>,
    count: usize,
    within: Duration,
) -> Vec<Event> {
    let mut got = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => got.push(event),
            Ok(None) => panic!("event channel closed after {} of {count}", got.len()),
            Err(_) => panic!(
                "timed out after {} of {count} events: {:?}",
                got.len(),
                got.last()
            ),
        }
    }
    got
}

/// Collects `slow.end` events for another second (redeliveries arrive late).
async fn quiet_for_slow(rx: &mut UnboundedReceiver<Event>, done: &mut BTreeSet<u64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if event.case == "slow.end" {
            done.insert(event.n);
        }
    }
}

/// Asserts no further event arrives for `quiet`.
pub async fn quiet(rx: &mut UnboundedReceiver<Event>, quiet: Duration) {
    if let Ok(Some(event)) = tokio::time::timeout(quiet, rx.recv()).await {
        panic!("unexpected extra event: {event:?}");
    }
}

const PATIENCE: Duration = Duration::from_secs(20);

/// What the backend declares: unacknowledged messages come back, and are kept for a
/// consumer that is not there yet (the cases hold it to that).
fn is_durable(capabilities: &transport::backend::Capabilities) -> bool {
    capabilities.persistence && capabilities.at_least_once
}

fn numbers(events: &[Event]) -> Vec<u64> {
    let mut ns: Vec<u64> = events.iter().map(|e| e.n).collect();
    ns.sort_unstable();
    ns
}

/// A real backend whose first `left` publishes to `topic` fail.
struct FailingDeadLetters {
    inner: std::sync::Arc<dyn transport::backend::Backend>,
    topic: &'static str,
    left: std::sync::atomic::AtomicUsize,
}

impl transport::backend::Backend for FailingDeadLetters {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn capabilities(&self) -> transport::backend::Capabilities {
        self.inner.capabilities()
    }
    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> transport::backend::Publish<'a> {
        use std::sync::atomic::Ordering;
        let fail = topic == self.topic
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fail {
            return transport::backend::Publish::ready(Err(transport::BackendError::Operation {
                backend: "test",
                operation: "publish",
                reason: "injected dead-letter failure".into(),
            }));
        }
        self.inner.publish(topic, message)
    }
    fn subscribe<'a>(
        &'a self,
        spec: &'a transport::backend::SubscriptionSpec,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<transport::backend::Subscription, transport::BackendError>,
    > {
        self.inner.subscribe(spec)
    }
    fn close(&self) -> futures_util::future::BoxFuture<'_, Result<(), transport::BackendError>> {
        self.inner.close()
    }
    fn validate_topic(&self, topic: &str) -> Result<(), transport::BackendError> {
        self.inner.validate_topic(topic)
    }
    fn owns_header(&self, name: &str) -> bool {
        self.inner.owns_header(name)
    }
    fn max_message_size(&self) -> Option<usize> {
        self.inner.max_message_size()
    }
}

/// The cases. Each takes the target, skips if its broker is unreachable (fails in CI).
pub mod cases {
    use super::*;

    async fn publish(app: &Running, topic: &str, n: u64) {
        if let Err(error) = app.publisher().publish(topic, &n).await {
            panic!("publish to {topic} failed: {error}");
        }
    }

    /// One message there and back.
    pub async fn round_trip(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(run.config(target, ""), 1, &["basic"], tx, Duration::ZERO).await;
        publish(&app, "conf.basic", 42).await;
        let got = events(&mut rx, 1, PATIENCE).await;
        assert_eq!((got[0].case, got[0].n, got[0].attempt), ("basic", 42, 1));
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// Thousands of messages, none lost, none twice.
    pub async fn many_messages(target: &Target) {
        if !target.reachable() {
            return;
        }
        const N: u64 = 2_000;
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(
            run.config(target, "concurrency = 8"),
            1,
            &["many"],
            tx,
            Duration::ZERO,
        )
        .await;
        for n in 0..N {
            publish(&app, "conf.many", n).await;
        }
        let got = events(&mut rx, N as usize, Duration::from_secs(60)).await;
        assert_eq!(numbers(&got), (0..N).collect::<Vec<_>>());
        quiet(&mut rx, Duration::from_millis(300)).await;
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// No group: every App gets every message.
    pub async fn fan_out(target: &Target) {
        if !target.reachable() {
            return;
        }
        const N: u64 = 50;
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let one = start(
            run.config(target, ""),
            1,
            &["fanout"],
            tx.clone(),
            Duration::ZERO,
        )
        .await;
        let two = start(run.config(target, ""), 2, &["fanout"], tx, Duration::ZERO).await;
        for n in 0..N {
            publish(&one, "conf.fanout", n).await;
        }
        let got = events(&mut rx, 2 * N as usize, PATIENCE).await;
        for app in [1, 2] {
            let mine: Vec<Event> = got.iter().filter(|e| e.app == app).cloned().collect();
            assert_eq!(
                numbers(&mine),
                (0..N).collect::<Vec<_>>(),
                "app {app} sees every message"
            );
        }
        quiet(&mut rx, Duration::from_millis(300)).await;
        one.shutdown().await.unwrap();
        two.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// One group across two Apps: each message to exactly one of them.
    pub async fn competing_consumers(target: &Target) {
        if !target.reachable() {
            return;
        }
        const N: u64 = 200;
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let one = start(
            run.config(target, ""),
            1,
            &["workers"],
            tx.clone(),
            Duration::ZERO,
        )
        .await;
        let two = start(run.config(target, ""), 2, &["workers"], tx, Duration::ZERO).await;
        for n in 0..N {
            publish(&one, "conf.workers", n).await;
        }
        let got = events(&mut rx, N as usize, PATIENCE).await;
        assert_eq!(
            numbers(&got),
            (0..N).collect::<Vec<_>>(),
            "each message exactly once in the group"
        );
        quiet(&mut rx, Duration::from_millis(500)).await;
        one.shutdown().await.unwrap();
        two.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// Two groups and a group-less subscriber on one topic: each gets every message.
    pub async fn two_groups_and_a_fan_out_subscriber(target: &Target) {
        if !target.reachable() {
            return;
        }
        const N: u64 = 30;
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(
            run.config(target, ""),
            1,
            &["alpha", "beta", "watcher"],
            tx,
            Duration::ZERO,
        )
        .await;
        for n in 0..N {
            publish(&app, "conf.shared", n).await;
        }
        let got = events(&mut rx, 3 * N as usize, PATIENCE).await;
        let mut by_case: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
        for event in got {
            by_case.entry(event.case).or_default().push(event);
        }
        for case in ["alpha", "beta", "watcher"] {
            let seen = by_case.remove(case).unwrap_or_default();
            assert_eq!(
                numbers(&seen),
                (0..N).collect::<Vec<_>>(),
                "{case} sees every message"
            );
        }
        quiet(&mut rx, Duration::from_millis(300)).await;
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// Headers and key arrive as sent.
    pub async fn headers_and_key(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(run.config(target, ""), 1, &["basic"], tx, Duration::ZERO).await;
        app.publisher()
            .to("conf.basic")
            .header("trace-id", "t-1")
            .header("tenant", "äcme")
            .key("sensor-9")
            .send(&7u64)
            .await
            .unwrap();
        let got = events(&mut rx, 1, PATIENCE).await;
        assert_eq!(got[0].headers.get("trace-id"), Some("t-1"));
        assert_eq!(got[0].headers.get("tenant"), Some("äcme"));
        assert_eq!(got[0].headers.get("content-type"), Some("application/json"));
        assert_eq!(got[0].key.as_deref(), Some("sensor-9"));
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// One subscriber at concurrency 1 sees publish order.
    pub async fn ordering(target: &Target) {
        if !target.reachable() {
            return;
        }
        const N: u64 = 300;
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(
            run.config(target, "concurrency = 1"),
            1,
            &["ordered"],
            tx,
            Duration::ZERO,
        )
        .await;
        // one key: where a topic has partitions (Kafka), order is kept within one
        for n in 0..N {
            app.publisher()
                .to("conf.ordered")
                .key("one")
                .send(&n)
                .await
                .unwrap_or_else(|error| panic!("publish to conf.ordered failed: {error}"));
        }
        let got = events(&mut rx, N as usize, PATIENCE).await;
        let order: Vec<u64> = got.iter().map(|e| e.n).collect();
        assert_eq!(order, (0..N).collect::<Vec<_>>());
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// A handler error means another attempt, and the attempt number says so: in a group
    /// (the broker's redelivery where it has one) and without (retried in place).
    pub async fn redelivery_after_error(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(
            run.config(target, ""),
            1,
            &["flaky", "flaky_all"],
            tx,
            Duration::ZERO,
        )
        .await;
        for n in 0..5 {
            publish(&app, "conf.flaky", n).await;
            publish(&app, "conf.flaky.all", n).await;
        }
        let got = events(&mut rx, 20, PATIENCE).await;
        for case in ["flaky", "flaky.all"] {
            for n in 0..5 {
                let mut attempts: Vec<u32> = got
                    .iter()
                    .filter(|e| e.case == case && e.n == n)
                    .map(|e| e.attempt)
                    .collect();
                attempts.sort_unstable();
                assert_eq!(
                    attempts,
                    [1, 2],
                    "{case} message {n}: failed once, then handled"
                );
            }
        }
        quiet(&mut rx, Duration::from_millis(500)).await;
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// A panic is not an ack: the message comes again.
    pub async fn no_ack_on_panic(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(run.config(target, ""), 1, &["panicky"], tx, Duration::ZERO).await;
        publish(&app, "conf.panicky", 3).await;
        let got = events(&mut rx, 2, PATIENCE).await;
        assert_eq!(got.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2]);
        quiet(&mut rx, Duration::from_millis(500)).await;
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// After max attempts the message goes to `<topic>.dlq` with the error in headers.
    pub async fn dead_letter_after_max_attempts(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(run.config(target, ""), 1, &["doomed"], tx, Duration::ZERO).await;
        let dead = app.record("conf.doomed.dlq").await.unwrap();
        app.publisher()
            .to("conf.doomed")
            .header("trace-id", "t-9")
            .send(&7u64)
            .await
            .unwrap();
        let got = events(&mut rx, 3, PATIENCE).await;
        assert_eq!(got.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2, 3]);
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(letters.len(), 1, "dead-lettered");
        assert_eq!(&letters[0].payload[..], b"7");
        if app.backend().capabilities().headers {
            let h = &letters[0].headers;
            assert_eq!(h.get(dlq::ERROR), Some("cannot handle 7:    giving up"));
            assert_eq!(h.get(dlq::ERROR_KIND), Some("handler"));
            assert_eq!(h.get(dlq::ATTEMPTS), Some("3"));
            assert_eq!(h.get(dlq::ORIGINAL_TOPIC), Some("conf.doomed"));
            assert_eq!(h.get(dlq::SUBSCRIBER), Some("Probe::doomed"));
            assert_eq!(h.get("trace-id"), Some("t-9"));
        }
        quiet(&mut rx, Duration::from_millis(500)).await;
        assert_eq!(dead.messages().len(), 1, "dead-lettered once");
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// A payload that does not decode is dead-lettered once; the next is handled.
    pub async fn undecodable_payload(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(run.config(target, ""), 1, &["typed"], tx, Duration::ZERO).await;
        let dead = app.record("conf.typed.dlq").await.unwrap();
        app.publisher()
            .to("conf.typed")
            .send_bytes(&b"{\"celsius\": nope"[..])
            .await
            .unwrap();
        app.publisher()
            .publish("conf.typed", &Reading { celsius: 21.0 })
            .await
            .unwrap();
        let got = events(&mut rx, 1, PATIENCE).await;
        assert_eq!(got[0].n, 21);
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(&letters[0].payload[..], b"{\"celsius\": nope");
        if app.backend().capabilities().headers {
            assert_eq!(letters[0].headers.get(dlq::ERROR_KIND), Some("decode"));
        }
        quiet(&mut rx, Duration::from_millis(500)).await;
        assert_eq!(dead.messages().len(), 1);
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// Ten topics at once, each message to its own subscriber.
    pub async fn many_topics(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let subscribers = [
            "topic0", "topic1", "topic2", "topic3", "topic4", "topic5", "topic6", "topic7",
            "topic8", "topic9",
        ];
        let app = start(run.config(target, ""), 1, &subscribers, tx, Duration::ZERO).await;
        for n in 0..10 {
            publish(&app, &format!("conf.topic.{n}"), n).await;
        }
        let got = events(&mut rx, 10, PATIENCE).await;
        assert_eq!(numbers(&got), (0..10).collect::<Vec<_>>());
        quiet(&mut rx, Duration::from_millis(300)).await;
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// A 1 MiB payload (or the broker's default limit, less room for headers).
    pub async fn large_payload(target: &Target) {
        if !target.reachable() {
            return;
        }
        let size = (1usize << 20).min(target.max_payload - 8 * 1024);
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let sum = payload.iter().fold(0u64, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(u64::from(*b))
        });
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(run.config(target, ""), 1, &["big"], tx, Duration::ZERO).await;
        app.publisher()
            .to("conf.big")
            .send_with::<transport::codec::RawBytes, _>(&payload[..])
            .await
            .unwrap();
        let got = events(&mut rx, 2, PATIENCE).await;
        assert_eq!((got[0].case, got[0].n), ("big", size as u64));
        assert_eq!(
            (got[1].case, got[1].n),
            ("big.sum", sum),
            "the bytes arrive intact"
        );
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// A payload over the limit is refused with a clear error; the next one flows.
    pub async fn oversized_payload_is_refused(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let mut config = run.config(target, "");
        config.broker.max_message_bytes = 64 * 1024;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(config, 1, &["big"], tx, Duration::ZERO).await;
        let error = app
            .publisher()
            .to("conf.big")
            .send_bytes(vec![7u8; 64 * 1024 + 1])
            .await
            .expect_err("an oversized payload is refused");
        assert!(error.to_string().contains("exceeds"), "{error}");
        app.publisher()
            .to("conf.big")
            .send_bytes(vec![1u8; 10])
            .await
            .unwrap();
        let got = events(&mut rx, 2, PATIENCE).await;
        assert_eq!(got[0].n, 10);
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// Messages published before a group first subscribes are delivered to it.
    pub async fn late_subscriber_sees_old_messages(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let producer = start(run.config(target, ""), 1, &[], tx.clone(), Duration::ZERO).await;
        for n in 0..3 {
            publish(&producer, "conf.late", n).await;
        }
        producer.shutdown().await.unwrap();
        let consumer = start(run.config(target, ""), 2, &["late"], tx, Duration::ZERO).await;
        let got = events(&mut rx, 3, PATIENCE).await;
        assert_eq!(numbers(&got), [0, 1, 2]);
        consumer.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// Shutdown lets in-flight handlers finish and starts none; on a durable backend the
    /// rest is delivered to the next member of the group.
    pub async fn graceful_drain(target: &Target) {
        if !target.reachable() {
            return;
        }
        const N: u64 = 6;
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(
            run.config(target, "concurrency = 2"),
            1,
            &["slow"],
            tx.clone(),
            Duration::from_millis(400),
        )
        .await;
        let durable = is_durable(&app.backend().capabilities());
        // a key each: where a topic has partitions (Kafka, whose partitions run in order,
        // one message at a time each), they spread so that two can run at once
        for n in 0..N {
            app.publisher()
                .to("conf.slow")
                .key(n.to_string())
                .send(&n)
                .await
                .unwrap_or_else(|error| panic!("publish to conf.slow failed: {error}"));
        }
        let started = events(&mut rx, 2, PATIENCE).await;
        assert!(
            started.iter().all(|e| e.case == "slow.start"),
            "{started:?}"
        );
        app.shutdown().await.unwrap();
        let mut after: Vec<Event> = Vec::new();
        while let Ok(event) = rx.try_recv() {
            after.push(event);
        }
        let finished: BTreeSet<u64> = after
            .iter()
            .filter(|e| e.case == "slow.end")
            .map(|e| e.n)
            .collect();
        let begun: BTreeSet<u64> = started.iter().map(|e| e.n).collect();
        assert_eq!(
            finished, begun,
            "in-flight handlers finished before shutdown returned"
        );
        assert!(
            after.iter().all(|e| e.case == "slow.end"),
            "nothing started after shutdown began: {after:?}"
        );

        if durable {
            let next = start(
                run.config(target, "concurrency = 4"),
                2,
                &["slow"],
                tx,
                Duration::ZERO,
            )
            .await;
            // At-least-once: duplicates are allowed, losses are not.
            let expected: BTreeSet<u64> = (0..N).filter(|n| !begun.contains(n)).collect();
            let mut done: BTreeSet<u64> = BTreeSet::new();
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while !expected.is_subset(&done) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(event)) if event.case == "slow.end" => {
                        done.insert(event.n);
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            assert!(
                expected.is_subset(&done),
                "the unstarted messages {expected:?} went to the next member; got {done:?}"
            );
            // what the first member finished was acknowledged before shutdown returned:
            // the broker never hands it out again
            quiet_for_slow(&mut rx, &mut done).await;
            let twice: BTreeSet<&u64> = done.intersection(&finished).collect();
            assert!(
                twice.is_empty(),
                "handled and acknowledged by the first member, handled again: {twice:?}"
            );
            next.shutdown().await.unwrap();
        }
        run.cleanup(target).await;
    }

    /// A dead letter is a new message: its own id (the original's in a header), so a
    /// broker that deduplicates by id never drops it as a copy of the original.
    pub async fn dead_letter_is_a_new_message(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(
            run.config(target, "max_attempts = 1"),
            1,
            &["doomed"],
            tx,
            Duration::ZERO,
        )
        .await;
        let dead = app.record("conf.doomed.dlq").await.unwrap();
        app.publisher()
            .to("conf.doomed")
            .id("dup-1")
            .send(&5u64)
            .await
            .unwrap();
        events(&mut rx, 1, PATIENCE).await;
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(letters.len(), 1, "dead-lettered");
        if app.backend().capabilities().headers {
            // the consumed message's id: the producer's where the broker keeps it, the
            // broker's own (a Redis entry id) where it assigns one
            let original = letters[0].headers.get(dlq::ORIGINAL_ID);
            // (a Redis entry id names an entry of one stream: the dead letter's, on its
            // own stream, may equal the original's)
            assert!(original.is_some(), "{letters:?}");
            assert_ne!(letters[0].id.as_deref(), Some("dup-1"), "an id of its own");
            assert_eq!(letters[0].headers.get("correlation-id"), original);
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while app.dead_letters().published_count() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(app.dead_letters().published_count(), 1);
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// A dead-letter publish that fails is retried; the handler never runs again (on a
    /// redelivering broker the message comes back over its attempts and goes straight
    /// to the dead-letter topic).
    pub async fn dead_letter_publish_failing(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let config = run.config(target, "");
        let backend = match transport::backend::connect(&config.broker).await {
            Ok(backend) => backend,
            Err(error) => panic!("cannot connect: {error}"),
        };
        let flaky = std::sync::Arc::new(FailingDeadLetters {
            inner: backend,
            topic: "conf.doomed.dlq",
            left: std::sync::atomic::AtomicUsize::new(2),
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        crate::init_tracing();
        let names = ["Probe::doomed".to_string()];
        let app = App::new(config)
            .select(move |r| names.iter().any(|n| n == r.name))
            .service(Probe {
                app: 1,
                events: tx,
                slow: Duration::ZERO,
            })
            .backend(flaky.clone())
            .start()
            .await
            .unwrap();
        let dead = app.record("conf.doomed.dlq").await.unwrap();
        publish(&app, "conf.doomed", 9).await;
        let got = events(&mut rx, 3, PATIENCE).await;
        assert_eq!(got.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2, 3]);
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(letters.len(), 1, "dead-lettered once the publish worked");
        quiet(&mut rx, Duration::from_millis(800)).await;
        assert_eq!(dead.messages().len(), 1, "dead-lettered once");
        assert_eq!(app.dead_letters().failed_count(), 2);
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// A handler over `handler_timeout` fails its attempt and is retried.
    pub async fn handler_timeout(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(
            run.config(target, "handler_timeout = \"300ms\""),
            1,
            &["hung"],
            tx,
            Duration::ZERO,
        )
        .await;
        publish(&app, "conf.hung", 4).await;
        let got = events(&mut rx, 2, PATIENCE).await;
        assert_eq!(got.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2]);
        quiet(&mut rx, Duration::from_millis(500)).await;
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// Shutdown finishes while the broker is down: every wait on it is bounded.
    pub async fn shutdown_while_broker_down(target: &Target) {
        let Some(server) = target.server else {
            return;
        };
        if !target.reachable() {
            return;
        }
        let Some(mut broker) = PrivateBroker::start_or_skip(server) else {
            return;
        };
        let run = Run::at(target, Some(broker.url()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(
            run.config(
                target,
                "\n[shutdown]\ndrain_timeout = \"2s\"\nclose_timeout = \"2s\"",
            ),
            1,
            &["restart"],
            tx,
            Duration::ZERO,
        )
        .await;
        publish(&app, "conf.restart", 1).await;
        events(&mut rx, 1, PATIENCE).await;
        broker.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shutdown = tokio::time::timeout(Duration::from_secs(15), app.shutdown()).await;
        assert!(
            shutdown.is_ok(),
            "shutdown did not finish within 15 s while the broker was down"
        );
    }

    /// Wildcards and malformed names are refused, on publish and at startup.
    pub async fn invalid_topics_are_refused(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, _rx) = mpsc::unbounded_channel();
        let app = start(
            run.config(target, ""),
            1,
            &["basic"],
            tx.clone(),
            Duration::ZERO,
        )
        .await;
        for bad in ["conf.bad.*", "conf.>", "conf..x", "conf x"] {
            let error = app.publisher().publish(bad, &1u64).await.unwrap_err();
            assert!(
                error.to_string().contains("invalid topic"),
                "{bad}: {error}"
            );
        }
        app.shutdown().await.unwrap();
        let config = run.config(
            target,
            "\n[subscribers.\"Probe::basic\"]\ndead_letter = \"{topic}.*\"",
        );
        let started = App::new(config)
            .select(|r| r.name == "Probe::basic")
            .service(Probe {
                app: 2,
                events: tx,
                slow: Duration::ZERO,
            })
            .start()
            .await;
        match started {
            Ok(_) => panic!("a wildcard dead-letter topic must not start"),
            Err(error) => {
                let text = error.to_string();
                assert!(text.contains("dead-letter topic `conf.basic.*`"), "{text}");
            }
        }
        run.cleanup(target).await;
    }

    /// A broker entry that cannot be turned into a message (written by a foreign
    /// producer) is dead-lettered as malformed, without running the handler, and the
    /// entries after it are handled. Each backend whose broker can hold such an entry
    /// says how to write one ([`Target::write_malformed`]).
    pub async fn malformed_entry(target: &Target) {
        if !target.reachable() {
            return;
        }
        let run = Run::new(target);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(run.config(target, ""), 1, &["typed"], tx, Duration::ZERO).await;
        let dead = app.record("conf.typed.dlq").await.unwrap();
        target
            .write_malformed(&run, "conf.typed")
            .await
            .expect("this backend can hold a malformed entry");
        app.publisher()
            .publish("conf.typed", &Reading { celsius: 3.0 })
            .await
            .unwrap();
        let got = events(&mut rx, 1, PATIENCE).await;
        assert_eq!(got[0].n, 3, "the entry after it is handled");
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(letters.len(), 1, "dead-lettered");
        assert_eq!(
            letters[0].headers.get(dlq::ERROR_KIND),
            Some("malformed"),
            "{letters:?}"
        );
        quiet(&mut rx, Duration::from_millis(300)).await;
        app.shutdown().await.unwrap();
        run.cleanup(target).await;
    }

    /// The subscription keeps working after its broker is killed and started again.
    pub async fn survives_broker_restart(target: &Target) {
        let Some(server) = target.server else {
            return;
        };
        if !target.reachable() {
            return;
        }
        let Some(mut broker) = PrivateBroker::start_or_skip(server) else {
            return;
        };
        let run = Run::at(target, Some(broker.url()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(run.config(target, ""), 1, &["restart"], tx, Duration::ZERO).await;
        let durable = is_durable(&app.backend().capabilities());
        publish(&app, "conf.restart", 1).await;
        assert_eq!(events(&mut rx, 1, PATIENCE).await[0].n, 1);

        broker.restart().expect("broker restarts");
        // Publish until one arrives: at-most-once backends lose what is sent while the
        // subscription is being restored; at-least-once ones must deliver the first one
        // the broker accepted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        let mut accepted: Vec<u64> = Vec::new();
        let mut n = 2;
        // (Message 1 may come again: its ack can be lost with the broker. At-least-once.)
        let seen = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing arrived after the restart; accepted {accepted:?}"
            );
            if app.publisher().publish("conf.restart", &n).await.is_ok() {
                accepted.push(n);
            }
            n += 1;
            match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                Ok(Some(event)) if event.n >= 2 => break event,
                _ => continue,
            }
        };
        if durable {
            // The first message the broker accepted after the restart is not lost.
            let first = accepted[0];
            let mut delivered = seen.n == first;
            while !delivered {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "message {first}, accepted after the restart, never arrived"
                );
                if let Ok(Some(event)) =
                    tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
                {
                    delivered = event.n == first;
                }
            }
        }
        app.shutdown().await.unwrap();
    }
}

/// Generates one test per case for a backend. Every case must be listed, either to run
/// or as `skip("reason")`: the reason shows in the test output as an ignored test.
#[macro_export]
macro_rules! conformance_suite {
    ($target:expr; $($case:ident $(= skip($reason:literal))?),* $(,)?) => {
        $( $crate::conformance_case!($target, $case $(, $reason)?); )*

        #[test]
        fn suite_lists_every_case() {
            let mut listed = vec![$(stringify!($case)),*];
            listed.sort_unstable();
            let mut all = $crate::conformance::CASES.to_vec();
            all.sort_unstable();
            assert_eq!(listed, all, "every conformance case is listed for this backend");
        }
    };
}

/// One case of [`conformance_suite!`].
#[macro_export]
macro_rules! conformance_case {
    ($target:expr, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            $crate::conformance::cases::$case(&$target).await;
        }
    };
    ($target:expr, $case:ident, $reason:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = $reason]
        async fn $case() {
            $crate::conformance::cases::$case(&$target).await;
        }
    };
}
