//! Interop with each broker's own tools: messages written by `redis-cli` and by a plain
//! NATS client reach typed subscribers, and what the framework publishes reads as plain
//! data with those tools (the wire format in the README).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc::{self, UnboundedSender};
use transport::prelude::*;
use transport::{App, Config, Running};
use transport_tests::{init_tracing, receive, unique};

#[derive(Debug, PartialEq, Deserialize, serde::Serialize)]
pub struct Order {
    pub id: u64,
    pub item: String,
}

#[derive(Debug)]
pub struct Seen {
    order: Order,
    headers: Headers,
    key: Option<String>,
}

pub struct Shop(pub UnboundedSender<Seen>);

#[transport::service]
impl Shop {
    #[subscriber(topic = "interop.orders", group = "shop")]
    async fn order(&self, order: Order, ctx: &Context) {
        let _ = self.0.send(Seen {
            order,
            headers: ctx.headers().clone(),
            key: ctx.key().map(str::to_string),
        });
    }
}

fn reachable(port: u16) -> bool {
    transport_tests::require_broker(port, if port == 4222 { "nats" } else { "redis" })
}

async fn start(kind: &str, prefix: &str, tx: UnboundedSender<Seen>) -> Running {
    init_tracing();
    let config = Config::from_toml(&format!(
        "[broker]\nkind = \"{kind}\"\ntopic_prefix = \"{prefix}\""
    ))
    .expect("config");
    App::new(config)
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx))
        .start()
        .await
        .expect("app starts")
}

fn redis_cli(args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli is installed with redis-server");
    assert!(
        output.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_xadd_reaches_a_typed_subscriber_and_xrange_reads_what_we_publish() {
    if !reachable(6379) {
        return;
    }
    let prefix = format!("{}.", unique("interop"));
    let stream = format!("{prefix}interop.orders");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = start("redis-streams", &prefix, tx).await;

    redis_cli(&[
        "XADD",
        &stream,
        "*",
        "payload",
        r#"{"id":7,"item":"tea"}"#,
        "key",
        "cust-1",
        "trace-id",
        "t-1",
    ]);
    let seen = receive(&mut rx, 1).await.remove(0);
    assert_eq!(
        seen.order,
        Order {
            id: 7,
            item: "tea".into()
        }
    );
    assert_eq!(seen.headers.get("trace-id"), Some("t-1"));
    assert_eq!(seen.key.as_deref(), Some("cust-1"));

    app.publisher()
        .to("interop.orders")
        .header("trace-id", "t-2")
        .key("cust-2")
        .send(&Order {
            id: 8,
            item: "milk".into(),
        })
        .await
        .unwrap();
    receive(&mut rx, 1).await;
    let entries = redis_cli(&["XRANGE", &stream, "-", "+"]);
    let lines: Vec<&str> = entries.lines().collect();
    for expected in [
        "payload",
        r#"{"id":8,"item":"milk"}"#,
        "key",
        "cust-2",
        "trace-id",
        "t-2",
        "content-type",
        "application/json",
    ] {
        assert!(
            lines.contains(&expected),
            "`{expected}` in XRANGE output:\n{entries}"
        );
    }
    app.shutdown().await.unwrap();
    redis_cli(&["DEL", &stream]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_publish_reaches_a_typed_subscriber_and_subscribe_reads_what_we_publish() {
    if !reachable(6379) {
        return;
    }
    let prefix = format!("{}.", unique("interop"));
    let channel = format!("{prefix}interop.orders");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = start("redis", &prefix, tx).await;

    redis_cli(&["PUBLISH", &channel, r#"{"id":9,"item":"bread"}"#]);
    assert_eq!(
        receive(&mut rx, 1).await[0].order,
        Order {
            id: 9,
            item: "bread".into()
        }
    );

    let mut listener = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "SUBSCRIBE", &channel])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    let stdout = listener.stdout.take().expect("piped stdout");
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // "subscribe", channel, 1: the subscription is in place
    receive(&mut lines_rx, 3).await;
    app.publisher()
        .publish(
            "interop.orders",
            &Order {
                id: 10,
                item: "jam".into(),
            },
        )
        .await
        .unwrap();
    let lines = receive(&mut lines_rx, 3).await;
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(
        lines,
        ["message", channel.as_str(), r#"{"id":10,"item":"jam"}"#]
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_nats_client_and_the_framework_understand_each_other() {
    if !reachable(4222) {
        return;
    }
    let prefix = format!("{}.", unique("interop"));
    let subject = format!("{prefix}interop.orders");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = start("nats", &prefix, tx).await;
    let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("trace-id", "t-3");
    client
        .publish_with_headers(
            subject.clone(),
            headers,
            r#"{"id":11,"item":"salt"}"#.into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let seen = receive(&mut rx, 1).await.remove(0);
    assert_eq!(
        seen.order,
        Order {
            id: 11,
            item: "salt".into()
        }
    );
    assert_eq!(seen.headers.get("trace-id"), Some("t-3"));

    // A header NATS cannot carry is a clear error (not a panic in the client), and the
    // publisher goes on working.
    let error = app
        .publisher()
        .to("interop.orders")
        .header("note", "two\nlines")
        .send(&Order {
            id: 0,
            item: "x".into(),
        })
        .await
        .expect_err("a line break cannot travel in a NATS header");
    assert!(
        error
            .to_string()
            .contains("header `note` cannot travel in NATS headers"),
        "{error}"
    );

    let mut plain = client.subscribe(subject.clone()).await.unwrap();
    // A round trip, so the server has the subscription before the framework publishes.
    let _ = client
        .request(format!("{prefix}sync"), bytes::Bytes::new())
        .await;
    app.publisher()
        .to("interop.orders")
        .key("k-1")
        .send(&Order {
            id: 12,
            item: "rice".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        receive(&mut rx, 1).await[0].order.id,
        12,
        "the framework's own subscriber got it"
    );
    let message = tokio::time::timeout(Duration::from_secs(10), plain.next())
        .await
        .expect("a message in time")
        .expect("subscription open");
    assert_eq!(&message.payload[..], br#"{"id":12,"item":"rice"}"#);
    let headers = message.headers.expect("headers");
    assert_eq!(
        headers.get("content-type").map(|v| v.as_str()),
        Some("application/json")
    );
    assert_eq!(
        headers.get("x-transport-key").map(|v| v.as_str()),
        Some("k-1")
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_jetstream_publish_reaches_a_typed_subscriber() {
    if !reachable(4222) {
        return;
    }
    let prefix = format!("{}.", unique("interop"));
    let subject = format!("{prefix}interop.orders");
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The framework creates the stream when it subscribes.
    let app = start("jetstream", &prefix, tx).await;
    let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .publish(subject.clone(), r#"{"id":13,"item":"oil"}"#.into())
        .await
        .unwrap()
        .await
        .expect("the stream acknowledges");
    assert_eq!(
        receive(&mut rx, 1).await[0].order,
        Order {
            id: 13,
            item: "oil".into()
        }
    );
    app.shutdown().await.unwrap();
    let _ = jetstream
        .delete_stream(format!("TRANSPORT_{}", subject.replace('.', "_")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_dead_consumer_left_pending_are_taken_over() {
    if !reachable(6379) {
        return;
    }
    let prefix = format!("{}.", unique("interop"));
    let stream = format!("{prefix}interop.orders");
    // A consumer of group `shop` reads two entries and dies without acknowledging them.
    redis_cli(&["XGROUP", "CREATE", &stream, "shop", "0", "MKSTREAM"]);
    redis_cli(&[
        "XADD",
        &stream,
        "*",
        "payload",
        r#"{"id":21,"item":"figs"}"#,
    ]);
    redis_cli(&[
        "XADD",
        &stream,
        "*",
        "payload",
        r#"{"id":22,"item":"kale"}"#,
    ]);
    let read = redis_cli(&[
        "XREADGROUP",
        "GROUP",
        "shop",
        "crashed-consumer",
        "COUNT",
        "2",
        "STREAMS",
        &stream,
        ">",
    ]);
    assert!(read.contains("figs") && read.contains("kale"), "{read}");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = Config::from_toml(&format!(
        "[broker]\nkind = \"redis-streams\"\ntopic_prefix = \"{prefix}\"\n[broker.redis]\nclaim_idle = \"300ms\"\nclaim_interval = \"100ms\""
    ))
    .expect("config");
    let app = App::new(config)
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx))
        .start()
        .await
        .expect("app starts");
    let mut ids: Vec<u64> = receive(&mut rx, 2)
        .await
        .into_iter()
        .map(|s| s.order.id)
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [21, 22],
        "the dead consumer's entries were claimed and handled"
    );
    app.shutdown().await.unwrap();
    // Handled and acknowledged: nothing is pending any more.
    let pending = redis_cli(&["XPENDING", &stream, "shop"]);
    assert_eq!(pending.lines().next(), Some("0"), "{pending}");
    redis_cli(&["DEL", &stream]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_messages_a_dead_consumer_held_come_back_after_ack_wait() {
    if !reachable(4222) {
        return;
    }
    let prefix = format!("{}.", unique("interop"));
    let subject = format!("{prefix}interop.orders");
    let config = || {
        Config::from_toml(&format!(
            "[broker]\nkind = \"jetstream\"\ntopic_prefix = \"{prefix}\"\n[broker.jetstream]\nack_wait = \"1s\""
        ))
        .expect("config")
    };
    // The framework creates the stream and the group's durable consumer.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = App::new(config())
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx.clone()))
        .start()
        .await
        .expect("starts");
    first.shutdown().await.unwrap();

    // Another member of the group takes two messages and dies without acknowledging.
    let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    for body in [r#"{"id":31,"item":"plums"}"#, r#"{"id":32,"item":"leeks"}"#] {
        jetstream
            .publish(subject.clone(), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let stream_name = format!("TRANSPORT_{}", subject.replace('.', "_"));
    let stream = jetstream.get_stream(&stream_name).await.unwrap();
    let durable = format!("shop__{}", subject.replace('.', "_"));
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&durable).await.unwrap();
    let mut batch = consumer.fetch().max_messages(2).messages().await.unwrap();
    let mut taken = 0;
    while let Some(message) = batch.next().await {
        message.unwrap();
        taken += 1;
    }
    assert_eq!(taken, 2, "the doomed member held both messages");

    let second = App::new(config())
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx))
        .start()
        .await
        .expect("starts");
    let mut ids: Vec<u64> = receive(&mut rx, 2)
        .await
        .into_iter()
        .map(|s| s.order.id)
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [31, 32],
        "redelivered to the live member after ack_wait"
    );
    second.shutdown().await.unwrap();
    let _ = jetstream.delete_stream(&stream_name).await;
}

mod slow {
    use super::*;

    pub struct SlowShop(pub UnboundedSender<(u64, u32)>);

    #[transport::service]
    impl SlowShop {
        #[subscriber(topic = "interop.backlog", group = "slow")]
        async fn order(&self, order: Order, ctx: &Context) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = self.0.send((order.id, ctx.attempt()));
        }
    }

    /// A backlog that takes longer than `ack_wait` to work through is not redelivered
    /// meanwhile: queued and running deliveries are reported in progress.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_jetstream_backlog_longer_than_ack_wait_is_handled_once() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let prefix = format!("{}.", unique("interop"));
        let config = Config::from_toml(&format!(
            "[broker]\nkind = \"jetstream\"\ntopic_prefix = \"{prefix}\"\n[broker.jetstream]\nack_wait = \"1s\"\n[subscriber]\nconcurrency = 1"
        ))
        .expect("config");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select_module(module_path!())
            .service(SlowShop(tx))
            .start()
            .await
            .expect("starts");
        const N: u64 = 30; // 3 s of work, three times ack_wait
        for id in 0..N {
            let order = Order {
                id,
                item: "box".into(),
            };
            app.publisher()
                .publish("interop.backlog", &order)
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < N as usize {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => seen.push(event),
                _ => panic!("only {} of {N} handled: {seen:?}", seen.len()),
            }
        }
        // nothing comes twice, even well after ack_wait
        if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await
        {
            panic!("redelivered: {extra:?}");
        }
        assert!(seen.iter().all(|(_, attempt)| *attempt == 1), "{seen:?}");
        app.shutdown().await.unwrap();
        let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
        let _ = async_nats::jetstream::new(client)
            .delete_stream(format!(
                "TRANSPORT_{}interop_backlog",
                prefix.replace('.', "_")
            ))
            .await;
    }
}

async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// The payload of a defective entry's dead letter: the raw fields as netstrings.
fn netstrings(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    while !bytes.is_empty() {
        let colon = bytes.iter().position(|b| *b == b':').expect("length");
        let len: usize = std::str::from_utf8(&bytes[..colon])
            .expect("digits")
            .parse()
            .expect("a length");
        let item = &bytes[colon + 1..colon + 1 + len];
        assert_eq!(bytes[colon + 1 + len], b',', "netstring ends with `,`");
        items.push(item.to_vec());
        bytes = &bytes[colon + 2 + len..];
    }
    items
}

mod defects {
    use super::*;
    use transport::dispatch::headers as dlq;

    pub struct Watcher(pub UnboundedSender<Seen>);

    #[transport::service]
    impl Watcher {
        #[subscriber(topic = "interop.watch")]
        async fn watch(&self, order: Order, ctx: &Context) {
            let _ = self.0.send(Seen {
                order,
                headers: ctx.headers().clone(),
                key: ctx.key().map(str::to_string),
            });
        }
    }

    /// One entry with a field name that is not UTF-8 and one without a payload field:
    /// both go to `<topic>.dlq` (kind `malformed`), the entries around them are handled,
    /// nothing stalls, for a group and for a group-less subscriber.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_stream_entries_that_are_not_messages_are_dead_lettered_and_the_rest_flows() {
        if !reachable(6379) {
            return;
        }
        init_tracing();
        let prefix = format!("{}.", unique("interop"));
        let config = Config::from_toml(&format!(
            "[broker]\nkind = \"redis-streams\"\ntopic_prefix = \"{prefix}\"\n[broker.redis]\nclaim_idle = \"300ms\"\nclaim_interval = \"100ms\""
        ))
        .expect("config");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select(|r| r.name == "Shop::order" || r.name == "Watcher::watch")
            .service(Shop(tx.clone()))
            .service(Watcher(tx))
            .start()
            .await
            .expect("app starts");
        let dead_orders = app.record("interop.orders.dlq").await.unwrap();
        let dead_watch = app.record("interop.watch.dlq").await.unwrap();
        let mut redis = redis_connection().await;
        for topic in ["interop.orders", "interop.watch"] {
            let stream = format!("{prefix}{topic}");
            let base = if topic == "interop.orders" { 50 } else { 60 };
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("payload")
                .arg(format!(r#"{{"id":{base},"item":"before"}}"#))
                .query_async(&mut redis)
                .await
                .unwrap();
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg(&b"bad\xff\xfename"[..])
                .arg(&b"v\x00\xff"[..])
                .arg("payload")
                .arg(r#"{"id":0,"item":"never"}"#)
                .query_async(&mut redis)
                .await
                .unwrap();
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("trace-id")
                .arg("no-payload")
                .query_async(&mut redis)
                .await
                .unwrap();
            for n in 1..=2 {
                let _: String = redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("payload")
                    .arg(format!(r#"{{"id":{},"item":"after"}}"#, base + n))
                    .query_async(&mut redis)
                    .await
                    .unwrap();
            }
        }
        let mut ids: Vec<u64> = receive(&mut rx, 6)
            .await
            .into_iter()
            .map(|s| s.order.id)
            .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [50, 51, 52, 60, 61, 62],
            "the good entries are handled"
        );
        for dead in [&dead_orders, &dead_watch] {
            let letters = dead.wait_for(2, Duration::from_secs(10)).await;
            assert_eq!(
                letters.len(),
                2,
                "both defective entries of {}",
                dead.topic()
            );
            for letter in &letters {
                assert_eq!(letter.headers.get(dlq::ERROR_KIND), Some("malformed"));
            }
            let raw: Vec<Vec<Vec<u8>>> = letters.iter().map(|l| netstrings(&l.payload)).collect();
            assert!(
                raw.contains(&vec![
                    b"bad\xff\xfename".to_vec(),
                    b"v\x00\xff".to_vec(),
                    b"payload".to_vec(),
                    br#"{"id":0,"item":"never"}"#.to_vec(),
                ]),
                "the raw fields survive, losslessly: {raw:?}"
            );
            assert!(
                raw.contains(&vec![b"trace-id".to_vec(), b"no-payload".to_vec()]),
                "{raw:?}"
            );
        }
        transport_tests::assert_quiet(&mut rx, Duration::from_millis(800)).await;
        assert_eq!(dead_orders.messages().len(), 2, "dead-lettered once");
        app.shutdown().await.unwrap();
        let pending = redis_cli(&["XPENDING", &format!("{prefix}interop.orders"), "shop"]);
        assert_eq!(pending.lines().next(), Some("0"), "all settled: {pending}");
        for topic in [
            "interop.orders",
            "interop.watch",
            "interop.orders.dlq",
            "interop.watch.dlq",
        ] {
            redis_cli(&["DEL", &format!("{prefix}{topic}")]);
        }
    }

    /// Group-less subscribers read from the newest entry at the time they subscribe and
    /// settle nothing with Redis (the README's table says so): what was added before
    /// is not delivered, what is added after is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_less_stream_subscriber_starts_at_the_newest_entry() {
        if !reachable(6379) {
            return;
        }
        init_tracing();
        let prefix = format!("{}.", unique("interop"));
        let stream = format!("{prefix}interop.watch");
        redis_cli(&["XADD", &stream, "*", "payload", r#"{"id":70,"item":"old"}"#]);
        let config = Config::from_toml(&format!(
            "[broker]\nkind = \"redis-streams\"\ntopic_prefix = \"{prefix}\""
        ))
        .expect("config");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select(|r| r.name == "Watcher::watch")
            .service(Watcher(tx))
            .start()
            .await
            .expect("app starts");
        redis_cli(&["XADD", &stream, "*", "payload", r#"{"id":71,"item":"new"}"#]);
        assert_eq!(receive(&mut rx, 1).await[0].order.id, 71);
        transport_tests::assert_quiet(&mut rx, Duration::from_millis(500)).await;
        app.shutdown().await.unwrap();
        // Nothing is left behind in Redis for a group-less subscriber.
        let groups = redis_cli(&["XINFO", "GROUPS", &stream]);
        assert!(groups.trim().is_empty(), "no consumer group: {groups}");
        redis_cli(&["DEL", &stream]);
    }
}

/// A group recreated after `NOGROUP` (group destroyed, stream deleted, server restarted
/// without persistence) resumes after the last entry it saw, never at `$`: with
/// `group_start = "latest"`, entries added meanwhile are still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_redis_group_resumes_where_it_was_not_at_the_newest_entry() {
    if !reachable(6379) {
        return;
    }
    let prefix = format!("{}.", unique("interop"));
    let stream = format!("{prefix}interop.orders");
    let (tx, mut rx) = mpsc::unbounded_channel();
    init_tracing();
    let config = Config::from_toml(&format!(
        "[broker]\nkind = \"redis-streams\"\ntopic_prefix = \"{prefix}\"\n[broker.redis]\ngroup_start = \"latest\"\nclaim_idle = \"1s\"\nclaim_interval = \"100ms\""
    ))
    .expect("config");
    let app = App::new(config)
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx))
        .start()
        .await
        .expect("app starts");
    let order = |id| Order {
        id,
        item: "x".into(),
    };
    app.publisher()
        .publish("interop.orders", &order(1))
        .await
        .unwrap();
    assert_eq!(receive(&mut rx, 1).await[0].order.id, 1);

    // Atomically: the group goes away and two entries arrive before anyone can
    // recreate it.
    let script = "redis.call('XGROUP', 'DESTROY', KEYS[1], 'shop') \
                  redis.call('XADD', KEYS[1], '*', 'payload', ARGV[1]) \
                  redis.call('XADD', KEYS[1], '*', 'payload', ARGV[2]) return 1";
    redis_cli(&[
        "EVAL",
        script,
        "1",
        &stream,
        r#"{"id":2,"item":"x"}"#,
        r#"{"id":3,"item":"x"}"#,
    ]);
    let mut ids: Vec<u64> = receive(&mut rx, 2)
        .await
        .into_iter()
        .map(|s| s.order.id)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [2, 3], "entries added while the group was gone");

    // The whole stream goes (FLUSHALL, a restart without persistence), and comes back
    // with new entries before the group does.
    let script = "redis.call('DEL', KEYS[1]) \
                  redis.call('XADD', KEYS[1], '*', 'payload', ARGV[1]) \
                  redis.call('XADD', KEYS[1], '*', 'payload', ARGV[2]) return 1";
    redis_cli(&[
        "EVAL",
        script,
        "1",
        &stream,
        r#"{"id":4,"item":"x"}"#,
        r#"{"id":5,"item":"x"}"#,
    ]);
    let mut ids: Vec<u64> = receive(&mut rx, 2)
        .await
        .into_iter()
        .map(|s| s.order.id)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [4, 5], "entries added to the recreated stream");
    transport_tests::assert_quiet(&mut rx, Duration::from_millis(500)).await;
    app.shutdown().await.unwrap();
    redis_cli(&["DEL", &stream]);
}

mod takeover {
    use super::*;

    pub struct Steady(pub UnboundedSender<u64>);

    #[transport::service]
    impl Steady {
        #[subscriber(topic = "interop.takeover", group = "steady")]
        async fn order(&self, order: Order) {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let _ = self.0.send(order.id);
        }
    }

    /// Entries a crashed consumer holds are taken over within about `claim_idle` +
    /// `claim_interval`, ahead of a backlog that takes far longer to work through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_consumers_entries_are_taken_over_ahead_of_a_backlog() {
        if !reachable(6379) {
            return;
        }
        init_tracing();
        let prefix = format!("{}.", unique("interop"));
        let stream = format!("{prefix}interop.takeover");
        const STRANDED: u64 = 20;
        const BACKLOG: u64 = 300; // 12 s of work at 40 ms each
        redis_cli(&["XGROUP", "CREATE", &stream, "steady", "0", "MKSTREAM"]);
        let mut redis = redis_connection().await;
        let mut pipe = redis::pipe();
        for id in 0..STRANDED {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("payload")
                .arg(format!(r#"{{"id":{},"item":"stranded"}}"#, 10_000 + id))
                .ignore();
        }
        pipe.query_async::<()>(&mut redis).await.unwrap();
        let read = redis_cli(&[
            "XREADGROUP",
            "GROUP",
            "steady",
            "crashed-consumer",
            "COUNT",
            &STRANDED.to_string(),
            "STREAMS",
            &stream,
            ">",
        ]);
        assert!(read.contains("stranded"), "{read}");
        let mut pipe = redis::pipe();
        for id in 0..BACKLOG {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("payload")
                .arg(format!(r#"{{"id":{id},"item":"backlog"}}"#))
                .ignore();
        }
        pipe.query_async::<()>(&mut redis).await.unwrap();

        let config = Config::from_toml(&format!(
            "[broker]\nkind = \"redis-streams\"\ntopic_prefix = \"{prefix}\"\n\
             [broker.redis]\nclaim_idle = \"1s\"\nclaim_interval = \"200ms\"\n\
             [subscriber]\nprefetch = 32\n[shutdown]\ndrain_timeout = \"1s\""
        ))
        .expect("config");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let started = tokio::time::Instant::now();
        let app = App::new(config)
            .select_module(module_path!())
            .service(Steady(tx))
            .start()
            .await
            .expect("app starts");
        // claim_idle + claim_interval + slack (the stranded entries' own handling
        // included: 20 x 40 ms).
        let deadline = started + Duration::from_millis(1000 + 200 + 1000 + 800 + 1000);
        let mut stranded = 0;
        let mut backlog = 0;
        while stranded < STRANDED {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(id)) if id >= 10_000 => stranded += 1,
                Ok(Some(_)) => backlog += 1,
                _ => panic!(
                    "after {:?}: {stranded} of {STRANDED} stranded entries taken over \
                     ({backlog} of the backlog handled)",
                    started.elapsed()
                ),
            }
        }
        assert!(
            backlog < BACKLOG / 2,
            "taken over ahead of the backlog ({backlog} handled first)"
        );
        app.shutdown().await.unwrap();
        redis_cli(&["DEL", &stream]);
    }
}

mod pubsub {
    use super::*;

    pub struct Mixed {
        pub brisk: UnboundedSender<u64>,
    }

    #[transport::service]
    impl Mixed {
        #[subscriber(topic = "interop.stuck")]
        async fn stuck(&self, _n: u64) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        #[subscriber(topic = "interop.brisk")]
        async fn brisk(&self, n: u64) {
            let _ = self.brisk.send(n);
        }
    }

    /// Redis pub/sub is at-most-once: a subscription whose handler is stuck loses what
    /// overflows its bounded queue, and every other subscription of the process goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_pubsub_subscriber_does_not_stall_the_others() {
        if !reachable(6379) {
            return;
        }
        init_tracing();
        let prefix = format!("{}.", unique("interop"));
        let config = Config::from_toml(&format!(
            "[broker]\nkind = \"redis\"\ntopic_prefix = \"{prefix}\"\n\
             [subscriber]\nprefetch = 4\n[shutdown]\ndrain_timeout = \"100ms\""
        ))
        .expect("config");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select_module(module_path!())
            .service(Mixed { brisk: tx })
            .start()
            .await
            .expect("app starts");
        for n in 0..200u64 {
            app.publisher().publish("interop.stuck", &n).await.unwrap();
        }
        for n in 0..50u64 {
            app.publisher().publish("interop.brisk", &n).await.unwrap();
        }
        let got = receive(&mut rx, 50).await;
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "all, in order");
        app.shutdown().await.unwrap();
    }
}

mod sizes {
    use super::*;
    use transport_tests::broker::{PrivateBroker, Server};

    pub struct Big(pub UnboundedSender<usize>);

    #[transport::service]
    impl Big {
        #[subscriber(topic = "interop.big", group = "big", codec = "bytes")]
        async fn big(&self, payload: bytes::Bytes) {
            let _ = self.0.send(payload.len());
        }
    }

    /// Once a read has brought large entries, the next reads ask for fewer of them
    /// (`COUNT` <= 64 MiB / entry size), seen in `MONITOR` on a private server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_ask_for_fewer_entries_once_entries_are_large() {
        init_tracing();
        let broker = match PrivateBroker::start(Server::Redis) {
            Ok(broker) => broker,
            Err(reason) => {
                assert!(!transport_tests::in_ci(), "{reason}");
                eprintln!("SKIPPED: {reason}");
                return;
            }
        };
        let url = broker.url();
        let port = url.rsplit(':').next().expect("port").to_string();
        let mut monitor = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "MONITOR"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli");
        let stdout = monitor.stdout.take().expect("piped stdout");
        let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("XREADGROUP") && lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let config = Config::from_toml(&format!(
            "[broker]\nkind = \"redis-streams\"\nurl = \"{url}\"\nmax_message_bytes = 33554432"
        ))
        .expect("config");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select_module(module_path!())
            .service(Big(tx))
            .start()
            .await
            .expect("app starts");
        let count_of = |line: &str| -> usize {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "\"COUNT\"").expect("COUNT");
            words[at + 1].trim_matches('"').parse().expect("a number")
        };
        let first = receive(&mut lines_rx, 1).await.remove(0);
        assert_eq!(
            count_of(&first),
            128,
            "half of prefetch 256 at first: {first}"
        );
        let payload = vec![7u8; 8 << 20];
        for _ in 0..3 {
            app.publisher()
                .to("interop.big")
                .send_bytes(payload.clone())
                .await
                .unwrap();
        }
        assert_eq!(receive(&mut rx, 3).await, [8 << 20; 3]);
        // Reads after the large entries arrived.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let line = tokio::time::timeout_at(deadline, lines_rx.recv())
                .await
                .expect("another read in time")
                .expect("monitor runs");
            if count_of(&line) <= 8 {
                break;
            }
            // A read issued before the large entries were seen.
            assert!(
                tokio::time::Instant::now() < deadline,
                "reads still ask for {}: {line}",
                count_of(&line)
            );
        }
        app.shutdown().await.unwrap();
        let _ = monitor.kill();
        let _ = monitor.wait();
    }
}
