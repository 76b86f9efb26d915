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
