//! NSQ interop, against a real nsqd where `NSQD_TCP_ADDRESS` and `NSQD_HTTP_ADDRESS` name
//! one (no registry ships nsqd; without them these tests print why they skip): a body
//! published with nsqd's HTTP `/pub` reaches a typed subscriber, and what the framework
//! publishes is read by `nsq_tail` (`NSQ_TAIL_BIN`, else on `PATH`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use tokio::sync::mpsc::{self, UnboundedSender};
use transport::prelude::*;
use transport::{App, Config};
use transport_tests::interop::{Order, Seen};
use transport_tests::{init_tracing, receive, unique};

/// nsqd's TCP and HTTP addresses, or `None` (with the reason printed).
fn nsqd() -> Option<(String, String)> {
    match (
        std::env::var("NSQD_TCP_ADDRESS"),
        std::env::var("NSQD_HTTP_ADDRESS"),
    ) {
        (Ok(tcp), Ok(http)) => Some((tcp, http)),
        _ => {
            eprintln!(
                "SKIPPED: nsq: NSQD_TCP_ADDRESS and NSQD_HTTP_ADDRESS are not set (no package registry ships nsqd)"
            );
            None
        }
    }
}

fn config(tcp: &str, prefix: &str) -> Config {
    Config::from_toml(&format!(
        "[broker]\nkind = \"nsq\"\nurl = \"nsq://{tcp}\"\ntopic_prefix = \"{prefix}\""
    ))
    .expect("config")
}

/// `POST /pub?topic=<topic>` with `body`, as any HTTP client would; nsqd's answer.
fn http_pub(http: &str, topic: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(http).expect("nsqd's HTTP address answers");
    write!(
        stream,
        "POST /pub?topic={topic} HTTP/1.0\r\nHost: {http}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request written");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer read");
    answer
}

pub struct Shop(pub UnboundedSender<Seen>);

#[transport::service]
impl Shop {
    #[subscriber(topic = "interop.nsq.orders", group = "shop")]
    async fn order(&self, order: Order, ctx: &Context) {
        let _ = self.0.send(Seen::of(order, ctx));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_pub_reaches_a_typed_subscriber() {
    let Some((tcp, http)) = nsqd() else { return };
    init_tracing();
    let prefix = format!("{}.", unique("nsq"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = App::new(config(&tcp, &prefix))
        .select(|r| r.name == "Shop::order")
        .service(Shop(tx))
        .start()
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"));
    let answer = http_pub(
        &http,
        &format!("{prefix}interop.nsq.orders"),
        r#"{"id":7,"item":"tea"}"#,
    );
    assert!(answer.ends_with("OK"), "{answer}");
    let seen = receive(&mut rx, 1).await.remove(0);
    assert_eq!(
        seen.order,
        Order {
            id: 7,
            item: "tea".into()
        }
    );
    assert_eq!(
        seen.id.as_deref().map(str::len),
        Some(16),
        "nsqd's message id"
    );
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsq_tail_reads_what_the_framework_publishes() {
    let Some((tcp, _)) = nsqd() else { return };
    let tail = std::env::var("NSQ_TAIL_BIN").unwrap_or_else(|_| "nsq_tail".into());
    init_tracing();
    let prefix = format!("{}.", unique("nsq"));
    let topic = format!("{prefix}interop.nsq.audit");
    let app = App::new(config(&tcp, &prefix))
        .select(|_| false)
        .start()
        .await
        .expect("the app starts");
    // published before nsq_tail subscribes: nsqd keeps it for the topic's first channel
    app.publisher()
        .publish(
            "interop.nsq.audit",
            &Order {
                id: 8,
                item: "bread".into(),
            },
        )
        .await
        .expect("published");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&tail)
            .args(["--nsqd-tcp-address", &tcp, "--topic", &topic, "-n", "1"])
            .output()
    })
    .await
    .expect("joined")
    .expect("nsq_tail runs (NSQ_TAIL_BIN, or nsq_tail on PATH)");
    let line = String::from_utf8_lossy(&output.stdout);
    let got: serde_json::Value = serde_json::from_str(line.trim()).expect("the body as it was");
    assert_eq!(got, serde_json::json!({"id": 8, "item": "bread"}));
    app.shutdown().await.expect("shutdown");
}

pub struct Batch(pub UnboundedSender<(u64, std::time::Instant)>);

#[transport::service]
impl Batch {
    #[subscriber(topic = "interop.nsq.batch", group = "batch")]
    async fn order(&self, order: Order) {
        let _ = self.0.send((order.id, std::time::Instant::now()));
    }
}

/// `publish_all` goes out as one `MPUB`, `deliver_after` as a `DPUB` nsqd holds back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_deferred_messages_reach_a_subscriber() {
    let Some((tcp, _)) = nsqd() else { return };
    init_tracing();
    let prefix = format!("{}.", unique("nsq"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = App::new(config(&tcp, &prefix))
        .select(|r| r.name == "Batch::order")
        .service(Batch(tx))
        .start()
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"));
    let sent = std::time::Instant::now();
    app.publisher()
        .to("interop.nsq.batch")
        .deliver_after(std::time::Duration::from_millis(800))
        .send(&Order {
            id: 1,
            item: "later".into(),
        })
        .await
        .expect("deferred");
    let batch: Vec<Order> = (2..=4)
        .map(|id| Order {
            id,
            item: "now".into(),
        })
        .collect();
    app.publisher()
        .publish_all("interop.nsq.batch", &batch)
        .await
        .expect("batch published");
    let got = receive(&mut rx, 4).await;
    let mut now: Vec<u64> = got[..3].iter().map(|(id, _)| *id).collect();
    now.sort_unstable();
    assert_eq!(now, [2, 3, 4], "the batch first");
    assert_eq!(got[3].0, 1, "the deferred one last");
    assert!(
        got[3].1 - sent >= std::time::Duration::from_millis(800),
        "held back: {:?}",
        got[3].1 - sent
    );
    app.shutdown().await.expect("shutdown");
}

pub struct Spread(pub UnboundedSender<u64>);

#[transport::service]
impl Spread {
    #[subscriber(topic = "interop.nsq.spread", group = "spread")]
    async fn order(&self, order: Order) {
        let _ = self.0.send(order.id);
    }
}

/// With `[broker.nsq] lookupd`, a subscription reads from every nsqd that nsqlookupd
/// names for the topic: two private nsqds registered with a private nsqlookupd, each
/// given messages directly, and the subscriber (which knows only nsqlookupd) gets them
/// all, from an nsqd that came up after it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_reads_every_nsqd_that_nsqlookupd_names() {
    use transport_tests::broker::{PrivateBroker, Server};
    if nsqd().is_none() {
        return;
    }
    init_tracing();
    let lookupd = match PrivateBroker::start(Server::Nsqlookupd) {
        Ok(lookupd) => lookupd,
        Err(reason) => {
            eprintln!("SKIPPED: {reason} (NSQLOOKUPD_BIN)");
            return;
        }
    };
    let register = || {
        vec![format!(
            "--lookupd-tcp-address=127.0.0.1:{}",
            lookupd.port()
        )]
    };
    let first = PrivateBroker::start_with(Server::Nsqd, register()).expect("nsqd starts");
    let prefix = format!("{}.", unique("nsq"));
    // the topic exists on the first nsqd before the subscriber asks nsqlookupd
    let publisher = App::new(config(&first.url().replace("nsq://", ""), &prefix))
        .select(|_| false)
        .start()
        .await
        .expect("publisher starts");
    publisher
        .publisher()
        .publish(
            "interop.nsq.spread",
            &Order {
                id: 1,
                item: "first".into(),
            },
        )
        .await
        .expect("published");
    let config = Config::from_toml(&format!(
        "[broker]\nkind = \"nsq\"\nurl = \"{}\"\ntopic_prefix = \"{prefix}\"\n\
         [broker.nsq]\nlookupd = [\"{}\"]\nlookupd_poll_interval = \"500ms\"",
        first.url(),
        lookupd.url()
    ))
    .expect("config");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = App::new(config)
        .select(|r| r.name == "Spread::order")
        .service(Spread(tx))
        .start()
        .await
        .unwrap_or_else(|error| panic!("the app starts: {error}"));
    assert_eq!(receive(&mut rx, 1).await, [1]);
    // a second nsqd comes up and gets the topic: the subscriber finds it
    let second = PrivateBroker::start_with(Server::Nsqd, register()).expect("nsqd starts");
    let other = App::new(config_for(&second, &prefix))
        .select(|_| false)
        .start()
        .await
        .expect("second publisher starts");
    other
        .publisher()
        .publish(
            "interop.nsq.spread",
            &Order {
                id: 2,
                item: "second".into(),
            },
        )
        .await
        .expect("published");
    assert_eq!(receive(&mut rx, 1).await, [2], "read from the second nsqd");
    app.shutdown().await.expect("shutdown");
    other.shutdown().await.expect("shutdown");
    publisher.shutdown().await.expect("shutdown");
}

fn config_for(nsqd: &transport_tests::broker::PrivateBroker, prefix: &str) -> Config {
    config(&nsqd.url().replace("nsq://", ""), prefix)
}
