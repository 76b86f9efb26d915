//! Interop with each broker's own tools: messages written by `redis-cli` and by a plain
//! NATS client reach typed subscribers, and what the framework publishes reads as plain
//! data with those tools (the wire format in the README).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc::{self, UnboundedSender};
use transport::prelude::*;
use transport::{App, Config, Running};
use transport_tests::interop::{Order, Seen};
use transport_tests::{init_tracing, receive, unique};

pub struct Shop(pub UnboundedSender<Seen>);

#[transport::service]
impl Shop {
    #[subscriber(topic = "interop.orders", group = "shop")]
    async fn order(&self, order: Order, ctx: &Context) {
        let _ = self.0.send(Seen::of(order, ctx));
    }
}

fn reachable(port: u16) -> bool {
    transport_tests::require_broker(port, if port == 4222 { "nats" } else { "redis" })
}

/// An App running only `Shop::order`, on `config`.
async fn start_shop(config: Config, tx: UnboundedSender<Seen>) -> Running {
    App::new(config)
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx))
        .start()
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"))
}

async fn start(kind: &str, prefix: &str, tx: UnboundedSender<Seen>) -> Running {
    init_tracing();
    let config = Config::from_toml(&format!(
        "[broker]\nkind = \"{kind}\"\ntopic_prefix = \"{prefix}\""
    ))
    .expect("config");
    start_shop(config, tx).await
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
    let app = start_shop(config, tx).await;
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
    let first = start_shop(config(), tx.clone()).await;
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

    let second = start_shop(config(), tx).await;
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
            let _ = self.0.send(Seen::of(order, ctx));
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
    let app = start_shop(config, tx).await;
    let order = |id| Order {
        id,
        item: "x".into(),
    };
    app.publisher()
        .publish("interop.orders", &order(1))
        .await
        .unwrap();
    assert_eq!(receive(&mut rx, 1).await[0].order.id, 1);
    // Its (batched) XACK reached Redis: otherwise it is rightly delivered again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while redis_cli(&["XPENDING", &stream, "shop"])
        .lines()
        .next()
        .is_none_or(|count| count.trim() != "0")
    {
        assert!(std::time::Instant::now() < deadline, "entry 1 never acked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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
    /// (The brisk one's queue holds its whole burst: with 4, like the stuck one's, a
    /// loaded CI machine that did not schedule it during the 50 publishes saw it drop 46.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_pubsub_subscriber_does_not_stall_the_others() {
        if !reachable(6379) {
            return;
        }
        init_tracing();
        let prefix = format!("{}.", unique("interop"));
        let config = Config::from_toml(&format!(
            "[broker]\nkind = \"redis\"\ntopic_prefix = \"{prefix}\"\n\
             [subscriber]\nprefetch = 4\n[shutdown]\ndrain_timeout = \"100ms\"\n\
             [subscribers.\"Mixed::brisk\"]\nprefetch = 256"
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
        let Some(broker) = PrivateBroker::start_or_skip(Server::Redis) else {
            return;
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
            "[broker]\nkind = \"redis-streams\"\nurl = \"{url}\"\nmax_message_bytes = 33554432\n[subscriber]\nprefetch = 256"
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

/// The hardening of the NATS and JetStream backends, against a real nats-server and a
/// plain async-nats client.
mod nats_hardening {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Instant;

    use async_nats::jetstream;
    use transport::backend::SubscriptionSpec;
    use transport_tests::broker::{PrivateBroker, Server};

    use super::*;

    const NATS: &str = "nats://127.0.0.1:4222";

    fn config(prefix: &str, kind: &str, extra: &str) -> Config {
        let text = format!("[broker]\nkind = \"{kind}\"\ntopic_prefix = \"{prefix}\"\n{extra}");
        match Config::from_toml(&text) {
            Ok(config) => config,
            Err(error) => panic!("config: {error}\n{text}"),
        }
    }

    async fn js() -> jetstream::Context {
        jetstream::new(async_nats::connect(NATS).await.expect("nats"))
    }

    /// Deletes every stream whose name holds `id`.
    async fn cleanup(id: &str) {
        let js = js().await;
        let mut names = js.stream_names();
        let mut doomed = Vec::new();
        while let Some(Ok(name)) = names.next().await {
            if name.contains(id) {
                doomed.push(name);
            }
        }
        for name in doomed {
            let _ = js.delete_stream(&name).await;
        }
    }

    async fn consumer_names(js: &jetstream::Context, stream: &str) -> Vec<String> {
        let stream = js.get_stream(stream).await.expect("stream");
        let mut names: Vec<String> = stream
            .consumer_names()
            .filter_map(|name| async move { name.ok() })
            .collect()
            .await;
        names.sort();
        names
    }

    /// Item 1 and review item C: a publish JetStream reports as a duplicate is an error
    /// when the framework made the id (a generated id or a dead letter's: a message was
    /// dropped), a success when the producer gave its own id (an idempotent retry);
    /// `Nats-*` headers are the broker's; the size limit is the server's `max_payload`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_duplicate_publish_is_an_error_only_for_generated_ids() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let app = App::new(config(&prefix, "jetstream", ""))
            .select(|_| false)
            .start()
            .await
            .expect("starts");
        let backend = app.backend();
        for owned in [
            "Nats-Msg-Id",
            "nats-expected-stream",
            "NATS-EXPECTED-LAST-SEQUENCE",
        ] {
            assert!(backend.owns_header(owned), "{owned} is the broker's");
        }
        assert!(!backend.owns_header("trace-id"));
        let client = async_nats::connect(NATS).await.unwrap();
        assert_eq!(
            backend.max_message_size(),
            Some(client.server_info().max_payload)
        );
        app.publisher()
            .to("dup")
            .id("order-1")
            .send(&1u64)
            .await
            .expect("the first publish");
        app.publisher()
            .to("dup")
            .id("order-1")
            .send(&1u64)
            .await
            .expect("a producer's own id seen again is an idempotent retry: a success");
        for generated in [
            transport::message_id(),
            format!("dlq-{}", transport::message_id()).into(),
        ] {
            assert!(transport::is_generated_id(&generated));
            app.publisher()
                .to("dup")
                .id(generated.clone())
                .send(&2u64)
                .await
                .expect("the first publish");
            let error = app
                .publisher()
                .to("dup")
                .id(generated.clone())
                .send(&2u64)
                .await
                .expect_err("a generated id the stream drops as a duplicate is not published");
            assert!(error.to_string().contains("duplicate"), "{error}");
        }
        let js = js().await;
        let name = js
            .stream_by_subject(format!("{prefix}dup"))
            .await
            .expect("stream");
        let mut stream = js.get_stream(&name).await.unwrap();
        assert_eq!(
            stream.info().await.unwrap().state.messages,
            3,
            "one copy of each id"
        );
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_owns_its_headers_and_knows_its_size_limit() {
        if !reachable(4222) {
            return;
        }
        let app = App::new(config("", "nats", ""))
            .select(|_| false)
            .start()
            .await
            .expect("starts");
        assert!(app.backend().owns_header("nats-msg-id"));
        assert!(!app.backend().owns_header("content-type"));
        let client = async_nats::connect(NATS).await.unwrap();
        assert_eq!(
            app.backend().max_message_size(),
            Some(client.server_info().max_payload)
        );
        app.shutdown().await.unwrap();
    }

    /// A publish over the server's `max_payload` (but under the framework's own
    /// `max_message_bytes`) is refused before it is sent, naming the server's limit, on
    /// core NATS and on JetStream; the connection goes on (a server closes a connection
    /// that sends an oversized payload). The limit is read once per connection, not per
    /// publish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_over_the_servers_max_payload_is_refused_and_the_connection_goes_on() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let server_limit = async_nats::connect(NATS)
            .await
            .unwrap()
            .server_info()
            .max_payload;
        for kind in ["nats", "jetstream"] {
            let prefix = format!("{id}.{kind}.");
            let extra = format!("max_message_bytes = {}", server_limit * 4);
            let app = App::new(config(&prefix, kind, &extra))
                .select(|_| false)
                .start()
                .await
                .expect("starts");
            for _ in 0..2 {
                let error = app
                    .publisher()
                    .to("big")
                    .send_bytes(vec![7u8; server_limit + 1])
                    .await
                    .expect_err("over the server's max_payload");
                assert!(
                    matches!(
                        &error,
                        transport::PublishError::Backend {
                            source: transport::BackendError::TooLarge { limit, .. },
                            ..
                        } if *limit == server_limit
                    ),
                    "{kind}: {error:?}"
                );
            }
            app.publisher()
                .to("big")
                .send_bytes(vec![1u8; 10])
                .await
                .unwrap_or_else(|error| panic!("{kind}: the connection goes on: {error}"));
            app.shutdown().await.unwrap();
        }
        cleanup(&id).await;
    }

    /// Credentials in `broker.url` never reach an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_credentials_in_the_url_never_reach_an_error() {
        for kind in ["nats", "jetstream"] {
            let config = Config::from_toml(&format!(
                "[broker]\nkind = \"{kind}\"\nurl = \"nats://alice:s3cret@127.0.0.1:1\"\nconnect_timeout = \"1s\""
            ))
            .expect("config");
            let error = match App::new(config).select(|_| false).start().await {
                Ok(_) => panic!("nothing listens on port 1"),
                Err(error) => error.to_string(),
            };
            assert!(!error.contains("s3cret"), "{kind}: {error}");
            assert!(error.contains("127.0.0.1:1"), "{kind}: {error}");
        }
    }

    pub struct JsRefuser(pub UnboundedSender<u32>);

    #[transport::service]
    impl JsRefuser {
        #[subscriber(topic = "orders.x", group = "refuser")]
        async fn refuse(&self, _n: u64, ctx: &Context) -> Result<(), Error> {
            let _ = self.0.send(ctx.attempt());
            Err(Error::msg("always fails"))
        }
    }

    /// Item 1: the dead letter of a message that carried a `Nats-Msg-Id`, into a stream
    /// that captures the dead-letter subject too, is a new message (not a duplicate).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_the_dead_letter_of_a_message_with_a_msg_id_arrives() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let config = config(
            &prefix,
            "jetstream",
            &format!(
                "[broker.jetstream]\nstreams = [{{ name = \"ORDERS_{id}\", subjects = [\"{prefix}orders.>\"] }}]\n\
                 [subscriber]\nmax_attempts = 2\nbackoff = \"10ms\"\nbackoff_max = \"50ms\""
            ),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select(|r| r.module_path == module_path!() && r.name == "JsRefuser::refuse")
            .service(JsRefuser(tx))
            .start()
            .await
            .expect("starts");
        let dead = app.record("orders.x.dlq").await.unwrap();
        let js = js().await;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "m-1");
        js.publish_with_headers(format!("{prefix}orders.x"), headers, "5".into())
            .await
            .unwrap()
            .await
            .expect("stored");
        receive(&mut rx, 2).await;
        let letters = dead.wait_for(1, Duration::from_secs(10)).await;
        assert_eq!(letters.len(), 1, "the dead letter arrived");
        assert_eq!(&letters[0].payload[..], b"5");
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    pub struct JsWatcher {
        seen: UnboundedSender<(u64, u32)>,
        failed: Mutex<HashSet<u64>>,
    }

    #[transport::service]
    impl JsWatcher {
        #[subscriber(topic = "interop.watch")]
        async fn watch(&self, n: u64, ctx: &Context) -> Result<(), Error> {
            let _ = self.seen.send((n, ctx.attempt()));
            let first = self
                .failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(n);
            if n == 1 && first {
                return Err(Error::msg("the first try fails"));
            }
            Ok(())
        }
    }

    /// Item 3: a group-less consumer lost on the server resumes at what it had not yet
    /// settled (a nak'd message), not after the last message it was handed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_groupless_consumer_resumes_at_what_it_had_nakd() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let config = config(
            &prefix,
            "jetstream",
            "[subscriber]\nmax_attempts = 5\nbackoff = \"4s\"\nbackoff_max = \"4s\"",
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select(|r| r.module_path == module_path!() && r.name == "JsWatcher::watch")
            .service(JsWatcher {
                seen: tx,
                failed: Mutex::new(HashSet::new()),
            })
            .start()
            .await
            .expect("starts");
        app.publisher()
            .publish("interop.watch", &1u64)
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [(1, 1)]);
        app.publisher()
            .publish("interop.watch", &2u64)
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [(2, 1)]);
        // The server loses the consumer while message 1 waits for its redelivery.
        let js = js().await;
        let stream = js
            .stream_by_subject(format!("{prefix}interop.watch"))
            .await
            .expect("the stream");
        for name in consumer_names(&js, &stream).await {
            js.get_stream(&stream)
                .await
                .unwrap()
                .delete_consumer(&name)
                .await
                .unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((1, _))) => break,
                Ok(Some(_)) => {}
                _ => panic!("message 1, nak'd before the consumer was lost, never came back"),
            }
        }
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    async fn shutdown_returns_while_the_server_is_down(kind: &str) {
        init_tracing();
        let Some(mut broker) = PrivateBroker::start_or_skip(Server::Nats) else {
            return;
        };
        let config = Config::from_toml(&format!(
            "[broker]\nkind = \"{kind}\"\nurl = \"{}\"\n",
            broker.url()
        ))
        .expect("config");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start_shop(config, tx).await;
        app.publisher()
            .publish(
                "interop.orders",
                &Order {
                    id: 1,
                    item: "tea".into(),
                },
            )
            .await
            .unwrap();
        receive(&mut rx, 1).await;
        broker.kill();
        // Something left to send while the server is gone.
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            app.publisher().publish(
                "interop.orders",
                &Order {
                    id: 2,
                    item: "jam".into(),
                },
            ),
        )
        .await;
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(30), app.shutdown()).await;
        assert!(result.is_ok(), "{kind}: shutdown hangs while NATS is down");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{kind}: shutdown took {:?}",
            started.elapsed()
        );
    }

    /// Item 6: the backends' own close is bounded while the server is down.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_shutdown_returns_while_the_server_is_down() {
        shutdown_returns_while_the_server_is_down("nats").await;
    }

    /// Item 6, JetStream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_shutdown_returns_while_the_server_is_down() {
        shutdown_returns_while_the_server_is_down("jetstream").await;
    }

    /// A subscription idle for longer than a pull request waits on the server keeps
    /// working (the expired request is renewed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_an_idle_subscription_keeps_working() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start_shop(config(&prefix, "jetstream", ""), tx).await;
        tokio::time::sleep(Duration::from_secs(13)).await;
        let order = Order {
            id: 5,
            item: "figs".into(),
        };
        app.publisher()
            .publish("interop.orders", &order)
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await[0].order, order);
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    /// Item 4: a stream an operator deletes is created again; publishing and the
    /// group's subscription carry on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_deleted_stream_is_created_again() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start_shop(config(&prefix, "jetstream", ""), tx).await;
        let order = |id| Order {
            id,
            item: "kale".into(),
        };
        app.publisher()
            .publish("interop.orders", &order(1))
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await[0].order.id, 1);
        let js = js().await;
        let name = js
            .stream_by_subject(format!("{prefix}interop.orders"))
            .await
            .expect("stream");
        js.delete_stream(&name).await.expect("deleted");
        app.publisher()
            .publish("interop.orders", &order(2))
            .await
            .expect("the stream is created again");
        assert_eq!(receive(&mut rx, 1).await[0].order.id, 2);
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    pub struct JsBacklog(pub UnboundedSender<(u64, u32)>);

    #[transport::service]
    impl JsBacklog {
        #[subscriber(topic = "interop.prefetched", group = "backlog")]
        async fn work(&self, n: u64, ctx: &Context) {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = self.0.send((n, ctx.attempt()));
        }
    }

    /// Item 7: with a small prefetch, what the client pulled ahead is reported in
    /// progress too: a backlog far longer than `ack_wait` is handled exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_backlog_with_a_small_prefetch_is_handled_exactly_once() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let config = config(
            &prefix,
            "jetstream",
            "[broker.jetstream]\nack_wait = \"1s\"\n[subscriber]\nprefetch = 10\nconcurrency = 1",
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select(|r| r.module_path == module_path!() && r.name == "JsBacklog::work")
            .service(JsBacklog(tx))
            .start()
            .await
            .expect("starts");
        const N: u64 = 60;
        for n in 0..N {
            app.publisher()
                .publish("interop.prefetched", &n)
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        while seen.len() < N as usize {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => seen.push(event),
                _ => panic!("only {} of {N} handled", seen.len()),
            }
        }
        if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(2500), rx.recv()).await
        {
            panic!("handled twice: {extra:?}");
        }
        let again: Vec<_> = seen.iter().filter(|(_, attempt)| *attempt > 1).collect();
        assert!(again.is_empty(), "redelivered: {again:?}");
        let distinct: HashSet<u64> = seen.iter().map(|(n, _)| *n).collect();
        assert_eq!(distinct.len(), N as usize);
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    /// Item 11: a changed consumer setting is applied to the existing durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_changed_consumer_setting_is_applied_on_redeploy() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        for (ack_wait, max_ack_pending) in [(1, 100), (3, 50)] {
            let (tx, _rx) = mpsc::unbounded_channel();
            let app = App::new(config(
                &prefix,
                "jetstream",
                &format!(
                    "[broker.jetstream]\nack_wait = \"{ack_wait}s\"\nmax_ack_pending = {max_ack_pending}"
                ),
            ))
            .select(|r| r.name == "Shop::order")
            .service(Shop(tx))
            .start()
            .await
            .expect("starts");
            let js = js().await;
            let stream_name = js
                .stream_by_subject(format!("{prefix}interop.orders"))
                .await
                .expect("stream");
            let stream = js.get_stream(&stream_name).await.unwrap();
            let names = consumer_names(&js, &stream_name).await;
            assert_eq!(names.len(), 1, "{names:?}");
            let info = stream.consumer_info(&names[0]).await.unwrap();
            assert_eq!(info.config.ack_wait, Duration::from_secs(ack_wait));
            assert_eq!(info.config.max_ack_pending, max_ack_pending);
            app.shutdown().await.unwrap();
        }
        cleanup(&id).await;
    }

    pub struct JsNames(pub UnboundedSender<(&'static str, u64)>);

    #[transport::service]
    impl JsNames {
        #[subscriber(topic = "names.a.b", group = "names")]
        async fn dotted(&self, n: u64) {
            let _ = self.0.send(("names.a.b", n));
        }
        #[subscriber(topic = "names.a_b", group = "names")]
        async fn underscored(&self, n: u64) {
            let _ = self.0.send(("names.a_b", n));
        }
    }

    /// Item 12: `names.a.b` and `names.a_b` get a stream and a durable each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_topics_differing_in_dot_and_underscore_do_not_collide() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config(&prefix, "jetstream", ""))
            .select(|r| r.module_path == module_path!() && r.name.starts_with("JsNames::"))
            .service(JsNames(tx))
            .start()
            .await
            .expect("starts");
        app.publisher().publish("names.a.b", &1u64).await.unwrap();
        app.publisher().publish("names.a_b", &2u64).await.unwrap();
        let mut got = receive(&mut rx, 2).await;
        got.sort();
        assert_eq!(got, [("names.a.b", 1), ("names.a_b", 2)]);
        transport_tests::assert_quiet(&mut rx, Duration::from_millis(500)).await;
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    /// Item 13: a stream the framework creates is bounded (7 days, 1 GiB by default).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_created_streams_are_bounded_by_default() {
        if !reachable(4222) {
            return;
        }
        let id = unique("interop");
        let prefix = format!("{id}.");
        let app = App::new(config(&prefix, "jetstream", ""))
            .select(|_| false)
            .start()
            .await
            .expect("starts");
        app.publisher().publish("bounded", &1u64).await.unwrap();
        let js = js().await;
        let name = js
            .stream_by_subject(format!("{prefix}bounded"))
            .await
            .expect("stream");
        let mut stream = js.get_stream(&name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(info.config.max_bytes, 1 << 30);
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    /// Item 24: a NATS core message's reply subject reaches the runtime as `reply_to`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_a_request_carries_its_reply_subject() {
        if !reachable(4222) {
            return;
        }
        let subject = format!("{}.ask", unique("interop"));
        let backend =
            transport::backend::nats::NatsBackend::connect(&config("", "nats", "").broker)
                .await
                .expect("connects");
        let mut deliveries = transport::backend::Backend::subscribe(
            &backend,
            &SubscriptionSpec {
                topic: subject.clone(),
                group: None,
                subscriber: "test".into(),
                prefetch: 1,
                max_attempts: 1,
                consumer: None,
                filter: false,
            },
        )
        .await
        .expect("subscribes");
        let client = async_nats::connect(NATS).await.unwrap();
        let request = tokio::spawn({
            let client = client.clone();
            let subject = subject.clone();
            async move { client.request(subject, "41".into()).await }
        });
        let delivery = tokio::time::timeout(Duration::from_secs(5), deliveries.next())
            .await
            .expect("delivered in time")
            .expect("open");
        let reply_to = delivery.message.reply_to.clone().expect("a reply subject");
        client.publish(reply_to, "42".into()).await.unwrap();
        let reply = request.await.unwrap().expect("the requester got the reply");
        assert_eq!(&reply.payload[..], b"42");
    }

    pub struct NatsAnswerer;

    #[transport::service]
    impl NatsAnswerer {
        #[subscriber(topic = "interop.ask", reply = "interop.answers")]
        async fn answer(&self, n: u64) -> Result<u64, Error> {
            Ok(n + 1)
        }
    }

    /// Item 24: a plain `nats req` gets the subscriber's reply (needs the dispatcher
    /// to publish replies to `reply_to`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_a_plain_request_gets_the_reply() {
        if !reachable(4222) {
            return;
        }
        let prefix = format!("{}.", unique("interop"));
        let app = App::new(config(&prefix, "nats", ""))
            .select(|r| r.module_path == module_path!() && r.name == "NatsAnswerer::answer")
            .service(NatsAnswerer)
            .start()
            .await
            .expect("starts");
        let client = async_nats::connect(NATS).await.unwrap();
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(format!("{prefix}interop.ask"), "41".into()),
        )
        .await
        .expect("in time")
        .expect("a reply");
        assert_eq!(&reply.payload[..], b"42");
        app.shutdown().await.unwrap();
    }

    pub struct JsStopper(pub UnboundedSender<u64>);

    #[transport::service]
    impl JsStopper {
        #[subscriber(topic = "interop.stop", group = "stopper")]
        async fn work(&self, n: u64) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = self.0.send(n);
        }
    }

    /// Item 28: at a graceful stop nothing pulled is left unsettled: the next member of
    /// the group gets the rest at once, not after `ack_wait`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_graceful_stop_hands_back_everything_it_pulled() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let config = || {
            config(
                &prefix,
                "jetstream",
                "[broker.jetstream]\nack_wait = \"30s\"\n[subscriber]\nprefetch = 4\nconcurrency = 1\n[shutdown]\ndrain_timeout = \"5s\"",
            )
        };
        const N: u64 = 40;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let first = App::new(config())
            .select(|r| r.module_path == module_path!() && r.name == "JsStopper::work")
            .service(JsStopper(tx.clone()))
            .start()
            .await
            .expect("starts");
        for n in 0..N {
            first.publisher().publish("interop.stop", &n).await.unwrap();
        }
        let mut done: HashSet<u64> = receive(&mut rx, 5).await.into_iter().collect();
        first.shutdown().await.unwrap();
        while let Ok(n) = rx.try_recv() {
            done.insert(n);
        }
        let second = App::new(config())
            .select(|r| r.module_path == module_path!() && r.name == "JsStopper::work")
            .service(JsStopper(tx))
            .start()
            .await
            .expect("starts");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while done.len() < N as usize {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(n)) => {
                    done.insert(n);
                }
                _ => {
                    let missing: Vec<u64> = (0..N).filter(|n| !done.contains(n)).collect();
                    panic!("not handed back at the stop (they wait for ack_wait): {missing:?}");
                }
            }
        }
        second.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    /// Item 30: a topic an existing stream captures is published there (no stream of
    /// our own, no "subjects overlap").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_topic_an_existing_stream_captures_is_published_there() {
        if !reachable(4222) {
            return;
        }
        let id = unique("interop");
        let prefix = format!("{id}.");
        let js = js().await;
        js.create_stream(jetstream::stream::Config {
            name: format!("OPS_{id}"),
            subjects: vec![format!("{prefix}ops.>")],
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("the operator's stream");
        let app = App::new(config(&prefix, "jetstream", ""))
            .select(|_| false)
            .start()
            .await
            .expect("starts");
        app.publisher()
            .publish("ops.orders.dlq", &1u64)
            .await
            .expect("published into the operator's stream");
        let mut stream = js.get_stream(format!("OPS_{id}")).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    pub struct JsLegacy(pub UnboundedSender<u64>);

    #[transport::service]
    impl JsLegacy {
        #[subscriber(topic = "legacy.orders", group = "legacy")]
        async fn take(&self, n: u64) {
            let _ = self.0.send(n);
        }
    }

    /// Item 30: `[subscribers."..."] consumer` names the durable to use.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_subscriber_uses_the_consumer_it_names() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let js = js().await;
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: format!("LEGACY_{id}"),
                subjects: vec![format!("{prefix}legacy.>")],
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .expect("the operator's stream");
        let durable = format!("billing-{id}");
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: format!("{prefix}legacy.orders"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("the operator's durable");
        for n in [1u64, 2] {
            js.publish(format!("{prefix}legacy.orders"), n.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config(
            &prefix,
            "jetstream",
            &format!("[subscribers.\"JsLegacy::take\"]\nconsumer = \"{durable}\""),
        ))
        .select(|r| r.module_path == module_path!() && r.name == "JsLegacy::take")
        .service(JsLegacy(tx))
        .start()
        .await
        .expect("starts");
        let mut got = receive(&mut rx, 2).await;
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        assert_eq!(
            consumer_names(&js, &format!("LEGACY_{id}")).await,
            std::slice::from_ref(&durable),
            "no durable of our own naming"
        );
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    /// An operator's stream and a durable on it, as `nats stream add` / `nats consumer
    /// add` would make them.
    async fn operator_durable(
        js: &jetstream::Context,
        stream: &str,
        subjects: &str,
        durable: &str,
        filter: &str,
        ack_wait: Duration,
        max_deliver: i64,
    ) {
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: stream.to_string(),
                subjects: vec![subjects.to_string()],
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .expect("the operator's stream");
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(durable.to_string()),
                filter_subject: filter.to_string(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver,
                ..Default::default()
            })
            .await
            .expect("the operator's durable");
    }

    pub struct JsSlowLegacy(pub UnboundedSender<(u64, u32)>);

    #[transport::service]
    impl JsSlowLegacy {
        #[subscriber(topic = "legacy.slow", group = "legacy")]
        async fn take(&self, n: u64, ctx: &Context) {
            let _ = self.0.send((n, ctx.attempt()));
            tokio::time::sleep(Duration::from_millis(4500)).await;
        }
    }

    /// Review item A: a consumer named in config is reported in progress within its own
    /// `ack_wait` (3 s here), not a third of the configured one (10 s): a handler that
    /// runs longer than 3 s is not redelivered meanwhile and handled twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_named_consumer_is_kept_in_progress_within_its_own_ack_wait() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let js = js().await;
        let durable = format!("slow-{id}");
        operator_durable(
            &js,
            &format!("LEGACY_{id}"),
            &format!("{prefix}legacy.>"),
            &durable,
            &format!("{prefix}legacy.slow"),
            Duration::from_secs(3),
            -1,
        )
        .await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config(
            &prefix,
            "jetstream",
            &format!("[subscribers.\"JsSlowLegacy::take\"]\nconsumer = \"{durable}\""),
        ))
        .select(|r| r.module_path == module_path!() && r.name == "JsSlowLegacy::take")
        .service(JsSlowLegacy(tx))
        .start()
        .await
        .expect("starts");
        app.publisher().publish("legacy.slow", &1u64).await.unwrap();
        assert_eq!(receive(&mut rx, 1).await, [(1, 1)]);
        // Redelivered after 3 s, the copy would start as soon as the first run ends.
        transport_tests::assert_quiet(&mut rx, Duration::from_secs(6)).await;
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    /// Review item A: a named consumer whose `max_deliver` is smaller than the attempts
    /// the runtime needs (max_attempts + 1: the delivery after the last attempt is the
    /// one dead-lettered at once) is refused at startup, naming both values: the server
    /// would stop delivering the message before it is ever dead-lettered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_named_consumer_with_a_smaller_max_deliver_is_refused() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let js = js().await;
        let durable = format!("billing-{id}");
        operator_durable(
            &js,
            &format!("LEGACY_{id}"),
            &format!("{prefix}legacy.>"),
            &durable,
            &format!("{prefix}legacy.orders"),
            Duration::from_secs(30),
            3,
        )
        .await;
        let start = |max_attempts: u32| {
            let (tx, _rx) = mpsc::unbounded_channel();
            App::new(config(
                &prefix,
                "jetstream",
                &format!(
                    "[subscribers.\"JsLegacy::take\"]\nconsumer = \"{durable}\"\nmax_attempts = {max_attempts}"
                ),
            ))
            .select(|r| r.module_path == module_path!() && r.name == "JsLegacy::take")
            .service(JsLegacy(tx))
            .start()
        };
        let error = match start(5).await {
            Ok(app) => {
                app.shutdown().await.unwrap();
                panic!("max_deliver 3 with max_attempts 5 must not start");
            }
            Err(error) => error.to_string(),
        };
        for part in [durable.as_str(), "max_deliver", "3", "max_attempts", "5"] {
            assert!(error.contains(part), "`{part}` missing from: {error}");
        }
        start(2)
            .await
            .expect("max_deliver 3 leaves room for 2 attempts and the dead letter")
            .shutdown()
            .await
            .unwrap();
        cleanup(&id).await;
    }

    /// Review item B: a group's durable an operator deletes is created again where the
    /// group was (the oldest message it had not acknowledged), not at the start of the
    /// stream: what was handled is not handled again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_deleted_durable_resumes_where_the_group_was() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start_shop(config(&prefix, "jetstream", ""), tx).await;
        let order = |id| Order {
            id,
            item: "plums".into(),
        };
        for n in [1, 2] {
            app.publisher()
                .publish("interop.orders", &order(n))
                .await
                .unwrap();
        }
        let mut got: Vec<u64> = receive(&mut rx, 2)
            .await
            .into_iter()
            .map(|seen| seen.order.id)
            .collect();
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        // Let the acks reach the server, then `nats consumer rm` the group's durable.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let js = js().await;
        let stream = js
            .stream_by_subject(format!("{prefix}interop.orders"))
            .await
            .expect("the stream");
        let names = consumer_names(&js, &stream).await;
        assert_eq!(names.len(), 1, "{names:?}");
        js.get_stream(&stream)
            .await
            .unwrap()
            .delete_consumer(&names[0])
            .await
            .unwrap();
        app.publisher()
            .publish("interop.orders", &order(3))
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await[0].order.id, 3, "handled again");
        transport_tests::assert_quiet(&mut rx, Duration::from_secs(1)).await;
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }

    /// Review item E: a publish the stream refuses for its own `max_msg_size` (smaller
    /// than the server's `max_payload`) is `TooLarge` with the stream's limit, so a dead
    /// letter can be fitted under it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_a_message_over_the_streams_max_msg_size_is_too_large() {
        if !reachable(4222) {
            return;
        }
        init_tracing();
        let id = unique("interop");
        let prefix = format!("{id}.");
        let js = js().await;
        js.create_stream(jetstream::stream::Config {
            name: format!("SMALL_{id}"),
            subjects: vec![format!("{prefix}small.>")],
            storage: jetstream::stream::StorageType::Memory,
            max_message_size: 1024,
            ..Default::default()
        })
        .await
        .expect("the operator's stream");
        let app = App::new(config(
            &prefix,
            "jetstream",
            &format!(
                "[broker.jetstream]\nstreams = [{{ name = \"SMALL_{id}\", subjects = [\"{prefix}small.>\"] }}]"
            ),
        ))
        .select(|_| false)
        .start()
        .await
        .expect("starts");
        let backend = app.backend();
        backend
            .publish("small.orders", Message::new(vec![b'x'; 500]))
            .await
            .expect("under the stream's limit");
        match backend
            .publish("small.orders", Message::new(vec![b'x'; 2000]))
            .await
        {
            Err(transport::BackendError::TooLarge { limit, size, .. }) => {
                assert_eq!(limit, 1024);
                assert!(size >= 2000, "{size}");
            }
            other => panic!("expected TooLarge with the stream's limit, got {other:?}"),
        }
        app.shutdown().await.unwrap();
        cleanup(&id).await;
    }
}

/// Passwords in a Redis URL never reach an error (its text or its `Debug`), nor a log line.
#[tokio::test]
async fn redis_credentials_in_the_url_never_reach_an_error() {
    init_tracing();
    for kind in ["redis", "redis-streams"] {
        for url in [
            "redis://:hunter2@127.0.0.1:1",
            "redis://admin:hunter2@127.0.0.1:1/0",
        ] {
            let config = Config::from_toml(&format!(
                "[broker]\nkind = \"{kind}\"\nurl = \"{url}\"\nconnect_timeout = \"1s\""
            ))
            .expect("config");
            assert!(!format!("{config:?}").contains("hunter2"));
            let error = match App::new(config).select(|_| false).start().await {
                Ok(_) => panic!("nothing listens on port 1"),
                Err(error) => error,
            };
            for text in [error.to_string(), format!("{error:?}")] {
                assert!(!text.contains("hunter2"), "{kind}: {text}");
                assert!(text.contains("127.0.0.1:1"), "{kind}: {text}");
            }
        }
    }
}

/// The hardening of the Redis streams backend, against real redis-servers.
mod redis_hardening {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    use transport_tests::broker::{PrivateBroker, Server};

    use super::*;

    fn streams_config(prefix_or_url: &str, extra: &str) -> Config {
        let text = format!("[broker]\nkind = \"redis-streams\"\n{prefix_or_url}\n{extra}");
        match Config::from_toml(&text) {
            Ok(config) => config,
            Err(error) => panic!("config: {error}\n{text}"),
        }
    }

    /// The first publish after the server restarts succeeds, on both Redis backends: the
    /// publishing connection, found closed, is made again and the command sent once more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_the_first_publish_after_a_restart_goes_through() {
        init_tracing();
        let Some(mut broker) = PrivateBroker::start_or_skip(Server::Redis) else {
            return;
        };
        let url = broker.url();
        let mut apps = Vec::new();
        for kind in ["redis", "redis-streams"] {
            let config =
                Config::from_toml(&format!("[broker]\nkind = \"{kind}\"\nurl = \"{url}\""))
                    .unwrap();
            let app = App::new(config).select(|_| false).start().await.unwrap();
            app.publisher()
                .publish("restart.first", &1u64)
                .await
                .unwrap();
            apps.push((kind, app));
        }
        broker.restart().expect("redis restarts");
        for (kind, app) in &apps {
            let published = app.publisher().publish("restart.first", &2u64).await;
            assert!(published.is_ok(), "{kind}: {published:?}");
        }
        for (_, app) in apps {
            app.shutdown().await.unwrap();
        }
    }

    /// Each id handled more than once, with how often.
    fn twice(handled: &[u64]) -> HashMap<u64, usize> {
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for n in handled {
            *counts.entry(*n).or_default() += 1;
        }
        counts.retain(|_, count| *count > 1);
        counts
    }

    pub struct Slow(pub UnboundedSender<u64>);

    #[transport::service]
    impl Slow {
        #[subscriber(topic = "hardening.slow", group = "slow")]
        async fn work(&self, n: u64) {
            let _ = self.0.send(n);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    /// Item A: with a legal `claim_interval` close to `claim_idle`, entries whose handlers
    /// still run stay fresh: another member of the group (scanning often) never takes
    /// one over, so nothing is handled twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_a_long_claim_interval_never_lets_running_handlers_be_taken_over() {
        if !reachable(6379) {
            return;
        }
        init_tracing();
        let prefix = format!("{}.", unique("interop"));
        let config = |interval: &str| {
            streams_config(
                &format!("topic_prefix = \"{prefix}\""),
                &format!(
                    "[broker.redis]\nclaim_idle = \"1s\"\nclaim_interval = \"{interval}\"\n\
                     [subscriber]\nconcurrency = 100\nprefetch = 100\n\
                     [shutdown]\ndrain_timeout = \"5s\""
                ),
            )
        };
        let select = |r: &transport::registry::Registration| {
            r.module_path == module_path!() && r.name == "Slow::work"
        };
        const N: u64 = 60;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let first = App::new(config("990ms"))
            .select(select)
            .service(Slow(tx.clone()))
            .start()
            .await
            .expect("starts");
        let started = tokio::time::Instant::now();
        // Read at every phase of the first member's refresh tick.
        for n in 0..N {
            first
                .publisher()
                .publish("hardening.slow", &n)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // A member that looks for idle entries every 50 ms.
        let second = App::new(config("50ms"))
            .select(select)
            .service(Slow(tx))
            .start()
            .await
            .expect("starts");
        let mut handled = Vec::new();
        // Every handler of the first member has finished by then.
        let deadline = started + Duration::from_millis(30 * N + 3000 + 1500);
        while let Ok(Some(n)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            handled.push(n);
        }
        let distinct: HashSet<u64> = handled.iter().copied().collect();
        assert_eq!(distinct.len(), N as usize, "every entry handled");
        assert_eq!(
            twice(&handled),
            HashMap::new(),
            "entries taken over while their handlers ran"
        );
        first.shutdown().await.unwrap();
        second.shutdown().await.unwrap();
        redis_cli(&["DEL", &format!("{prefix}hardening.slow")]);
    }

    pub struct Gated {
        pub seen: UnboundedSender<u64>,
        pub gate: Arc<tokio::sync::Semaphore>,
    }

    #[transport::service]
    impl Gated {
        #[subscriber(topic = "hardening.gated", group = "gated")]
        async fn work(&self, n: u64) {
            let _ = self.seen.send(n);
            let _ = self.gate.acquire().await;
        }
    }

    async fn pending_count(url: &str, stream: &str, group: &str) -> Option<i64> {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(&mut connection)
            .await
            .ok()?;
        match summary {
            redis::Value::Array(parts) => match parts.first() {
                Some(redis::Value::Int(count)) => Some(*count),
                _ => None,
            },
            _ => None,
        }
    }

    /// Item B: entries handled while Redis is gone for a moment (their `XACK` fails) are
    /// acknowledged once it is back, and never handled again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_a_failed_xack_is_retried_and_nothing_is_handled_twice() {
        init_tracing();
        let Some(mut broker) = PrivateBroker::start_or_skip(Server::RedisPersistent) else {
            return;
        };
        let url = broker.url();
        let config = streams_config(
            &format!("url = \"{url}\""),
            "[broker.redis]\nclaim_idle = \"2s\"\nclaim_interval = \"1s\"\n\
             [subscriber]\nconcurrency = 10\nprefetch = 10\n\
             [shutdown]\ndrain_timeout = \"2s\"\nclose_timeout = \"2s\"",
        );
        const N: u64 = 5;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select(|r| r.module_path == module_path!() && r.name == "Gated::work")
            .service(Gated {
                seen: tx,
                gate: Arc::clone(&gate),
            })
            .start()
            .await
            .expect("starts");
        for n in 0..N {
            app.publisher()
                .publish("hardening.gated", &n)
                .await
                .unwrap();
        }
        let mut handled = receive(&mut rx, N as usize).await;
        // Redis goes away while the handlers run; they finish, and their XACK fails (at
        // least the first command on the dead connection does; the settler's other
        // commands run once a second only).
        broker.kill();
        gate.add_permits(1000);
        tokio::time::sleep(Duration::from_millis(700)).await;
        broker.restart().expect("redis comes back");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Ok(n) = rx.try_recv() {
                handled.push(n);
            }
            if pending_count(&url, "hardening.gated", "gated").await == Some(0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the handled entries are never acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Longer than claim_idle + claim_interval: what was not acknowledged would be
        // claimed and handled again by now.
        let quiet = tokio::time::Instant::now() + Duration::from_secs(4);
        while let Ok(Some(n)) = tokio::time::timeout_at(quiet, rx.recv()).await {
            handled.push(n);
        }
        assert_eq!(
            twice(&handled),
            HashMap::new(),
            "handled again after their XACK failed"
        );
        app.shutdown().await.unwrap();
    }

    pub struct Stopper(pub UnboundedSender<u64>);

    #[transport::service]
    impl Stopper {
        #[subscriber(topic = "hardening.stop", group = "stopper")]
        async fn work(&self, n: u64) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = self.0.send(n);
        }
    }

    /// Item C: at a graceful stop, what a member held without handling it comes back to
    /// the next member at once, not after `claim_idle` (30 s here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_a_graceful_stop_makes_what_it_held_claimable_at_once() {
        if !reachable(6379) {
            return;
        }
        init_tracing();
        let prefix = format!("{}.", unique("interop"));
        let config = || {
            streams_config(
                &format!("topic_prefix = \"{prefix}\""),
                "[broker.redis]\nclaim_idle = \"30s\"\nclaim_interval = \"200ms\"\n\
                 [subscriber]\nprefetch = 8\nconcurrency = 1\n\
                 [shutdown]\ndrain_timeout = \"5s\"",
            )
        };
        let select = |r: &transport::registry::Registration| {
            r.module_path == module_path!() && r.name == "Stopper::work"
        };
        const N: u64 = 40;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let first = App::new(config())
            .select(select)
            .service(Stopper(tx.clone()))
            .start()
            .await
            .expect("starts");
        for n in 0..N {
            first
                .publisher()
                .publish("hardening.stop", &n)
                .await
                .unwrap();
        }
        let mut done: HashSet<u64> = receive(&mut rx, 5).await.into_iter().collect();
        first.shutdown().await.unwrap();
        while let Ok(n) = rx.try_recv() {
            done.insert(n);
        }
        let second = App::new(config())
            .select(select)
            .service(Stopper(tx))
            .start()
            .await
            .expect("starts");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while done.len() < N as usize {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(n)) => {
                    done.insert(n);
                }
                _ => {
                    let missing: Vec<u64> = (0..N).filter(|n| !done.contains(n)).collect();
                    panic!("not released at the stop (they wait for claim_idle): {missing:?}");
                }
            }
        }
        second.shutdown().await.unwrap();
        let stream = format!("{prefix}hardening.stop");
        let pending = redis_cli(&["XPENDING", &stream, "stopper"]);
        assert_eq!(pending.lines().next(), Some("0"), "all settled: {pending}");
        redis_cli(&["DEL", &stream]);
    }

    /// Item D: the public `url` field of a connect error holds no password.
    #[tokio::test]
    async fn redis_connect_errors_hold_the_url_without_its_password() {
        init_tracing();
        for url in [
            "redis://:hunter2@127.0.0.1:1",
            "redis://admin:hunter2@127.0.0.1:1/0",
        ] {
            let config = streams_config(&format!("url = \"{url}\"\nconnect_timeout = \"1s\""), "");
            let errors = [
                transport::backend::redis::RedisBackend::connect(&config.broker)
                    .await
                    .err(),
                transport::backend::redis_streams::RedisStreamsBackend::connect(&config.broker)
                    .await
                    .err(),
            ];
            for error in errors {
                match error {
                    Some(transport::BackendError::Connect { url, .. }) => {
                        assert!(!url.contains("hunter2"), "{url}");
                        assert!(url.contains("127.0.0.1:1"), "{url}");
                    }
                    other => panic!("a connect error, got {other:?}"),
                }
            }
        }
    }
}
