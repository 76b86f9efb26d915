//! Interop with Mosquitto's own clients (`mosquitto_pub`, `mosquitto_sub` from
//! `mosquitto-clients`, installed by `scripts/brokers up`), MQTT 5: what they publish
//! reaches typed subscribers, user properties included, and what the framework publishes
//! reads as plain MQTT (the wire format in the README).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};
use transport::prelude::*;
use transport::{App, Config, Running};
use transport_tests::interop::{Order, Seen};
use transport_tests::{init_tracing, receive, unique};

pub struct Shop(pub UnboundedSender<Seen>);

#[transport::service]
impl Shop {
    #[subscriber(topic = "interop.mqtt.orders", group = "shop")]
    async fn order(&self, order: Order, ctx: &Context) {
        let _ = self.0.send(Seen::of(order, ctx));
    }
}

fn config(prefix: &str) -> Config {
    Config::from_toml(&format!(
        "[broker]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic_prefix = \"{prefix}\""
    ))
    .expect("config")
}

async fn start(prefix: &str, tx: UnboundedSender<Seen>) -> Running {
    init_tracing();
    App::new(config(prefix))
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx))
        .start()
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_reaches_a_typed_subscriber() {
    if !transport_tests::require_broker(1883, "mqtt") {
        return;
    }
    let prefix = format!("{}.", unique("mqtt"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = start(&prefix, tx).await;
    // dotted names are MQTT levels
    let topic = format!("{prefix}interop.mqtt.orders").replace('.', "/");
    let status = Command::new("mosquitto_pub")
        .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", "1883", "-q", "1"])
        .args(["-t", &topic, "-m", r#"{"id":7,"item":"tea"}"#])
        .args(["-D", "publish", "user-property", "trace-id", "t-1"])
        .args(["-D", "publish", "user-property", "x-transport-key", "k-7"])
        .args(["-D", "publish", "user-property", "message-id", "m-7"])
        .args(["-D", "publish", "content-type", "application/json"])
        .args(["-D", "publish", "correlation-data", "c-7"])
        .status()
        .expect("mosquitto_pub is installed with mosquitto-clients");
    assert!(status.success(), "mosquitto_pub: {status}");
    let seen = receive(&mut rx, 1).await.remove(0);
    assert_eq!(
        seen.order,
        Order {
            id: 7,
            item: "tea".into()
        }
    );
    assert_eq!(seen.headers.get("trace-id"), Some("t-1"));
    assert_eq!(seen.headers.get("content-type"), Some("application/json"));
    assert_eq!(seen.headers.get("correlation-id"), Some("c-7"));
    assert_eq!(seen.key.as_deref(), Some("k-7"));
    assert_eq!(seen.id.as_deref(), Some("m-7"));
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_reads_what_the_framework_publishes() {
    if !transport_tests::require_broker(1883, "mqtt") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("mqtt"));
    let topic = format!("{prefix}interop.mqtt.audit").replace('.', "/");
    let mut reader = Command::new("mosquitto_sub")
        .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", "1883", "-q", "1"])
        .args(["-t", &topic, "-C", "1", "-W", "20", "-F", "%J"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub is installed with mosquitto-clients");
    let stdout = reader.stdout.take().expect("stdout");
    let app = App::new(config(&prefix))
        .select(|_| false)
        .start()
        .await
        .expect("the app starts");
    // mosquitto_sub says nothing when it has subscribed: publish until it has a message
    let line = tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next());
    tokio::pin!(line);
    let line = loop {
        app.publisher()
            .to("interop.mqtt.audit")
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
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(300), &mut line).await {
            break read
                .expect("reader")
                .and_then(Result::ok)
                .expect("a message");
        }
    };
    let _ = reader.wait();
    let got: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(got["topic"], topic.as_str());
    assert_eq!(
        got["payload"],
        serde_json::json!({"id": 8, "item": "bread"})
    );
    assert_eq!(got["properties"]["content-type"], "application/json");
    assert_eq!(got["properties"]["correlation-data"], "c-2");
    let user = &got["properties"]["user-properties"];
    assert_eq!(user["trace-id"], "t-2");
    assert_eq!(user["x-transport-key"], "k-2");
    assert_eq!(user["message-id"], "m-2");
    app.shutdown().await.expect("shutdown");
}

/// Records what it is given; with `hang`, never finishes (its message stays unacknowledged).
pub struct Session {
    seen: UnboundedSender<(u64, u32)>,
    hang: bool,
}

#[transport::service]
impl Session {
    #[subscriber(topic = "interop.mqtt.session")]
    async fn take(&self, n: u64, ctx: &Context) {
        let _ = self.seen.send((n, ctx.attempt()));
        if self.hang {
            std::future::pending::<()>().await;
        }
    }
}

/// With `[broker.mqtt] client_id`, sessions persist: a message left unacknowledged when
/// the App stopped, and one published while it was away, both arrive when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_gets_back_what_was_unacknowledged_or_sent_while_away() {
    if !transport_tests::require_broker(1883, "mqtt") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("mqtt"));
    let client_id = unique("session");
    let config = || {
        Config::from_toml(&format!(
            "[broker]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic_prefix = \"{prefix}\"\n\
             [broker.mqtt]\nclient_id = \"{client_id}\"\nsession_expiry = \"30s\"\n\
             [shutdown]\ndrain_timeout = \"200ms\""
        ))
        .expect("config")
    };
    let run = |hang: bool, seen: UnboundedSender<(u64, u32)>| {
        let config = config();
        async move {
            App::new(config)
                .select(|r| r.name == "Session::take")
                .service(Session { seen, hang })
                .start()
                .await
                .expect("the app starts")
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = run(true, tx).await;
    first
        .publisher()
        .publish("interop.mqtt.session", &1u64)
        .await
        .expect("published");
    assert_eq!(receive(&mut rx, 1).await, [(1, 1)]);
    // stops with the handler still running: message 1 is not acknowledged
    first.shutdown().await.expect("shutdown");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let producer = App::new(config())
        .select(|_| false)
        .start()
        .await
        .expect("the producer starts");
    producer
        .publisher()
        .publish("interop.mqtt.session", &2u64)
        .await
        .expect("published while the subscriber is away");
    let second = run(false, tx).await;
    let mut got = receive(&mut rx, 2).await;
    got.sort_unstable();
    assert_eq!(got[0].0, 1, "the unacknowledged message came back: {got:?}");
    assert!(got[0].1 >= 2, "marked as a redelivery: {got:?}");
    assert_eq!(got[1], (2, 1), "kept for the session while it was away");
    second.shutdown().await.expect("shutdown");
    producer.shutdown().await.expect("shutdown");
}

/// A subscriber to a foreign topic tree (HFP-like levels under a leading `/`).
pub struct Map(pub UnboundedSender<(String, Order)>);

#[transport::service]
impl Map {
    #[subscriber(
        mqtt_filter = "/transport-interop/hfp/v2/journey/ongoing/vp/bus/#",
        group = "map"
    )]
    async fn position(&self, order: Order, ctx: &Context) {
        let _ = self.0.send((ctx.topic().to_string(), order));
    }
}

/// The realtime-map case: a filter with `#` under a leading `/`, level names as HFP writes
/// them (`Itäkeskus(M)`, `08:30`, `60;25`), fed by `mosquitto_pub` and by the framework's
/// own publisher (a name holding `/` is an MQTT topic as it is); the handler sees each
/// concrete topic, and a sibling tree (`tram`) does not reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_subscriber_gets_a_foreign_topic_tree_with_its_concrete_topics() {
    if !transport_tests::require_broker(1883, "mqtt") {
        return;
    }
    init_tracing();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = App::new(config(&format!("{}.", unique("mqtt"))))
        .select(|r| r.name == "Map::position")
        .service(Map(tx))
        .start()
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"));
    let vehicle = unique("veh");
    let root = "/transport-interop/hfp/v2/journey/ongoing/vp";
    let tram = format!("{root}/tram/0040/{vehicle}");
    let bus = format!("{root}/bus/0018/{vehicle}/1059/1/Itäkeskus(M)/08:30/1453126/5/60;25");
    for (topic, id) in [(&tram, 1), (&bus, 2)] {
        let status = Command::new("mosquitto_pub")
            .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", "1883", "-q", "1"])
            .args([
                "-t",
                topic,
                "-m",
                &format!(r#"{{"id":{id},"item":"{vehicle}"}}"#),
            ])
            .status()
            .expect("mosquitto_pub is installed with mosquitto-clients");
        assert!(status.success(), "mosquitto_pub: {status}");
    }
    let from_clients = receive(&mut rx, 1).await.remove(0);
    assert_eq!(from_clients.0, bus);
    assert_eq!(from_clients.1.id, 2, "the tram's message does not match");
    // the framework publishes into the foreign tree too (no prefix: it is not ours)
    let own = format!("{root}/bus/0022/{vehicle}");
    let order = Order {
        id: 3,
        item: vehicle.clone(),
    };
    app.publisher()
        .publish(&own, &order)
        .await
        .expect("published");
    assert_eq!(receive(&mut rx, 1).await, [(own, order)]);
    transport_tests::assert_quiet(&mut rx, Duration::from_millis(300)).await;
    app.shutdown().await.expect("shutdown");
}

/// Wildcards in a topic one publishes to are refused, naming where they belong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_wildcard_topic_is_refused() {
    if !transport_tests::require_broker(1883, "mqtt") {
        return;
    }
    let app = App::new(config(""))
        .select(|_| false)
        .start()
        .await
        .expect("the app starts");
    for bad in ["/hfp/+/bus", "/hfp/#", "$SYS/broker"] {
        let error = app.publisher().publish(bad, &1).await.unwrap_err();
        assert!(
            error.to_string().contains("invalid topic"),
            "{bad}: {error}"
        );
    }
    app.shutdown().await.expect("shutdown");
}

/// More publishes at once than the MQTT client's request queue holds (1,024): those that
/// find it full wait for room in order, and every one returns once the broker confirmed
/// it (none lost, none matched with another's PUBACK and left waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_clients_request_queue_is_confirmed_in_full() {
    if !transport_tests::require_broker(1883, "mqtt") {
        return;
    }
    init_tracing();
    let prefix = format!("{}.", unique("mqtt-burst"));
    let app = App::new(config(&prefix))
        .select(|_| false)
        .start()
        .await
        .expect("the app starts");
    let publisher = app.publisher();
    let publishes =
        (0..4_000u32).map(|i| async move { publisher.publish("burst.readings", &i).await });
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(publishes),
    )
    .await
    .expect("every publish returns");
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    // the link still works after the burst
    publisher
        .publish("burst.readings", &0u32)
        .await
        .expect("a publish after the burst");
    app.shutdown().await.expect("shutdown");
}
