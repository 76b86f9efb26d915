//! Interop with a plain AMQP client (Python's `pika`, installed by `scripts/brokers up`):
//! what it publishes to the topic exchange reaches a typed subscriber, and what the
//! framework publishes reads as plain AMQP, headers and properties included (the wire
//! format in the README).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tokio::sync::mpsc::{self, UnboundedSender};
use transport::prelude::*;
use transport::{App, Config, Running};
use transport_tests::interop::{Order, Seen};
use transport_tests::{init_tracing, receive, unique};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub struct Shop(pub UnboundedSender<Seen>);

#[transport::service]
impl Shop {
    #[subscriber(topic = "interop.amqp.orders", group = "shop")]
    async fn order(&self, order: Order, ctx: &Context) {
        let _ = self.0.send(Seen::of(order, ctx));
    }
}

async fn start(prefix: &str, tx: UnboundedSender<Seen>) -> Running {
    init_tracing();
    let config = Config::from_toml(&format!(
        "[broker]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\ntopic_prefix = \"{prefix}\""
    ))
    .expect("config");
    App::new(config)
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx))
        .start()
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"))
}

/// Runs a Python script using `pika` with `args`; its stdout.
fn python(script: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python (pika): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const PUBLISH: &str = r#"
import json, sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
channel.exchange_declare("transport", "topic", durable=True)
channel.basic_publish("transport", sys.argv[2], json.dumps({"id": 7, "item": "tea"}),
    pika.BasicProperties(content_type="application/json", message_id="m-7",
        correlation_id="c-7", delivery_mode=2,
        headers={"trace-id": "t-1", "x-transport-key": "k-7", "retries": 5}))
connection.close()
"#;

const DELETE_QUEUE: &str = r#"
import sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
connection.channel().queue_delete(sys.argv[2])
connection.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_publish_reaches_a_typed_subscriber() {
    if !transport_tests::require_broker(5672, "rabbitmq") {
        return;
    }
    let prefix = format!("{}.", unique("amqp"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = start(&prefix, tx).await;
    let topic = format!("{prefix}interop.amqp.orders");
    python(PUBLISH, &[URL, &topic]);
    let seen = receive(&mut rx, 1).await.remove(0);
    assert_eq!(
        seen.order,
        Order {
            id: 7,
            item: "tea".into()
        }
    );
    assert_eq!(seen.headers.get("trace-id"), Some("t-1"));
    assert_eq!(
        seen.headers.get("retries"),
        Some("5"),
        "numbers arrive as text"
    );
    assert_eq!(seen.headers.get("content-type"), Some("application/json"));
    assert_eq!(seen.headers.get("correlation-id"), Some("c-7"));
    assert_eq!(seen.key.as_deref(), Some("k-7"));
    assert_eq!(seen.id.as_deref(), Some("m-7"));
    app.shutdown().await.expect("shutdown");
    python(DELETE_QUEUE, &[URL, &format!("{topic}#shop")]);
}

const CONSUME: &str = r#"
import json, sys, time, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
channel.exchange_declare("transport", "topic", durable=True)
queue = channel.queue_declare("", exclusive=True).method.queue
channel.queue_bind(queue, "transport", routing_key=sys.argv[2])
print("ready", flush=True)
deadline = time.time() + 20
while time.time() < deadline:
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    if method is None:
        time.sleep(0.05)
        continue
    print(json.dumps({
        "body": json.loads(body),
        "routing_key": method.routing_key,
        "headers": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (properties.headers or {}).items()},
        "content_type": properties.content_type,
        "message_id": properties.message_id,
        "correlation_id": properties.correlation_id,
        "delivery_mode": properties.delivery_mode,
    }), flush=True)
    break
connection.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_reads_what_the_framework_publishes() {
    if !transport_tests::require_broker(5672, "rabbitmq") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("amqp"));
    let topic = format!("{prefix}interop.amqp.audit");
    let mut reader = Command::new("python3")
        .arg("-c")
        .arg(CONSUME)
        .args([URL, &topic])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(reader.stdout.take().expect("stdout")).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(
        ready.as_deref(),
        Some("ready"),
        "pika could not bind its queue"
    );

    let config = Config::from_toml(&format!(
        "[broker]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\ntopic_prefix = \"{prefix}\""
    ))
    .expect("config");
    let app = App::new(config)
        .select(|_| false)
        .start()
        .await
        .expect("the app starts");
    app.publisher()
        .to("interop.amqp.audit")
        .header("trace-id", "t-2")
        .header("correlation-id", "c-2")
        .key("k-2")
        .id("m-2")
        .send(&Order {
            id: 8,
            item: "bread".into(),
        })
        .await
        .expect("published");
    let line = tokio::task::spawn_blocking(move || lines.next().and_then(Result::ok))
        .await
        .expect("reader")
        .expect("pika received the message");
    let _ = reader.wait();
    let got: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(got["body"], serde_json::json!({"id": 8, "item": "bread"}));
    assert_eq!(got["routing_key"], topic.as_str());
    assert_eq!(got["content_type"], "application/json");
    assert_eq!(got["message_id"], "m-2");
    assert_eq!(got["correlation_id"], "c-2");
    assert_eq!(got["delivery_mode"], 2, "persistent");
    assert_eq!(got["headers"]["trace-id"], "t-2");
    assert_eq!(got["headers"]["x-transport-key"], "k-2");
    app.shutdown().await.expect("shutdown");
}

/// Records what it is given; with `hang`, never finishes.
pub struct Counted {
    seen: UnboundedSender<(u64, u32)>,
    hang: bool,
}

#[transport::service]
impl Counted {
    #[subscriber(topic = "interop.amqp.quorum", group = "counted")]
    async fn take(&self, n: u64, ctx: &Context) {
        let _ = self.seen.send((n, ctx.attempt()));
        if self.hang {
            std::future::pending::<()>().await;
        }
    }
}

const IS_QUORUM: &str = r#"
import sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
# a declaration with other arguments than the queue's own is refused (406)
channel.queue_declare(sys.argv[2], durable=True, arguments={"x-queue-type": "quorum"})
channel.queue_delete(sys.argv[2])
connection.close()
"#;

/// `quorum = true`: group queues are quorum queues, and a message handed back by an App
/// stopped mid-handler comes to the next member with the broker's delivery count as its
/// attempt number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_count_deliveries() {
    if !transport_tests::require_broker(5672, "rabbitmq") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("amqp"));
    let config = || {
        Config::from_toml(&format!(
            "[broker]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\ntopic_prefix = \"{prefix}\"\n\
             [broker.rabbitmq]\nquorum = true\n[shutdown]\ndrain_timeout = \"200ms\""
        ))
        .expect("config")
    };
    let run = |hang: bool, seen: UnboundedSender<(u64, u32)>| {
        let config = config();
        async move {
            App::new(config)
                .select(|r| r.name == "Counted::take")
                .service(Counted { seen, hang })
                .start()
                .await
                .expect("the app starts")
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = run(true, tx).await;
    first
        .publisher()
        .publish("interop.amqp.quorum", &1u64)
        .await
        .expect("published");
    assert_eq!(receive(&mut rx, 1).await, [(1, 1)]);
    // stops while the handler runs: the message goes back to the queue
    first.shutdown().await.expect("shutdown");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let second = run(false, tx).await;
    assert_eq!(
        receive(&mut rx, 1).await,
        [(1, 2)],
        "the delivery count makes it attempt 2"
    );
    second.shutdown().await.expect("shutdown");
    let queue = format!("{prefix}interop.amqp.quorum#counted");
    python(IS_QUORUM, &[URL, &queue]);
}
