//! Middleware around handlers: ordered (App-wide outside per-subscriber), applied to every
//! subscriber or one, and the built-ins: a message id handled once per subscriber however
//! often it comes (`Idempotent`), a concurrency limit across subscribers (`ConcurrencyLimit`), and
//! errors classified into a dead letter now (`Classify`). A `layer_for` naming no
//! subscriber is a startup error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc::{self, UnboundedSender};
use transport::middleware::{
    Classify, ConcurrencyLimit, Idempotent, MemoryStore, Middleware, Next, Outcome,
};
use transport::prelude::*;
use transport::{App, Verdict};
use transport_tests::{PATIENCE, assert_quiet, memory_config, receive};

/// Notes each run of its handlers: (subscriber, payload).
pub struct Shop {
    runs: UnboundedSender<(&'static str, String)>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

#[transport::service]
impl Shop {
    #[subscriber(topic = "mw.orders", codec = "text")]
    async fn order(&self, text: String) -> Result<(), Error> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        let _ = self.runs.send(("order", text.clone()));
        if text.starts_with("invalid") {
            return Err(Error::msg(format!("{text}: invalid order")));
        }
        Ok(())
    }

    #[subscriber(topic = "mw.refunds", codec = "text")]
    async fn refund(&self, text: String) -> Result<(), Error> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        let _ = self.runs.send(("refund", text));
        Ok(())
    }
}

/// Records `<name> before` / `<name> after` around the rest of the chain.
struct Mark(&'static str, Arc<Mutex<Vec<String>>>);

impl Middleware for Mark {
    fn handle(&self, ctx: Context, next: Next) -> BoxFuture<'static, Outcome> {
        let (name, log) = (self.0, Arc::clone(&self.1));
        Box::pin(async move {
            let subscriber = ctx.subscriber();
            log.lock()
                .unwrap()
                .push(format!("{name} before {subscriber}"));
            let outcome = next.run(ctx).await;
            log.lock()
                .unwrap()
                .push(format!("{name} after {subscriber}"));
            outcome
        })
    }
}

fn shop() -> (
    Shop,
    mpsc::UnboundedReceiver<(&'static str, String)>,
    Arc<AtomicUsize>,
) {
    let (runs, rx) = mpsc::unbounded_channel();
    let most = Arc::new(AtomicUsize::new(0));
    let shop = Shop {
        runs,
        running: Arc::new(AtomicUsize::new(0)),
        most: Arc::clone(&most),
    };
    (shop, rx, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_run_in_order_and_one_for_a_subscriber_wraps_only_it() {
    let (shop, mut runs, _) = shop();
    let log = Arc::new(Mutex::new(Vec::new()));
    let app = App::new(memory_config(""))
        .select_module(module_path!())
        .service(shop)
        .layer(Mark("outer", Arc::clone(&log)))
        .layer(Mark("inner", Arc::clone(&log)))
        .layer_for("Shop::refund", Mark("refunds", Arc::clone(&log)))
        .start()
        .await
        .unwrap();
    // (the handler reports before it returns: wait for the whole chain to unwind)
    let unwound = |n: usize| {
        let log = Arc::clone(&log);
        async move {
            let deadline = std::time::Instant::now() + PATIENCE;
            while log.lock().unwrap().len() < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{:?}",
                    log.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    app.publisher()
        .publish_message("mw.orders", Message::new("o1"))
        .await
        .unwrap();
    receive(&mut runs, 1).await;
    unwound(4).await;
    app.publisher()
        .publish_message("mw.refunds", Message::new("r1"))
        .await
        .unwrap();
    receive(&mut runs, 1).await;
    unwound(10).await;
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer before Shop::order",
            "inner before Shop::order",
            "inner after Shop::order",
            "outer after Shop::order",
            "outer before Shop::refund",
            "inner before Shop::refund",
            "refunds before Shop::refund",
            "refunds after Shop::refund",
            "inner after Shop::refund",
            "outer after Shop::refund",
        ]
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_id_is_handled_once_and_the_limit_holds_across_subscribers_and_invalid_is_dead_lettered()
 {
    let (shop, mut runs, most) = shop();
    let config = memory_config("concurrency = 4\nmax_attempts = 3");
    let limit = ConcurrencyLimit::new(1);
    let app = App::new(config)
        .select_module(module_path!())
        .service(shop)
        .layer(Idempotent::new(MemoryStore::new(1000)))
        .layer(limit)
        .layer_for(
            "Shop::order",
            Classify::new(|error| {
                if error.to_string().contains("invalid") {
                    Verdict::DeadLetter
                } else {
                    Verdict::Retry
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let publisher = app.publisher();
    // the same id three times (a producer's retries), and two others
    for _ in 0..3 {
        publisher
            .to("mw.orders")
            .id("order-1")
            .send_bytes("o1")
            .await
            .unwrap();
    }
    publisher
        .to("mw.orders")
        .id("order-2")
        .send_bytes("o2")
        .await
        .unwrap();
    for n in 0..4 {
        publisher
            .to("mw.refunds")
            .id(format!("refund-{n}"))
            .send_bytes(format!("r{n}"))
            .await
            .unwrap();
    }
    publisher
        .to("mw.orders")
        .id("order-3")
        .send_bytes("invalid-3")
        .await
        .unwrap();
    // the same id on another subscriber is another message to it
    publisher
        .to("mw.refunds")
        .id("order-1")
        .send_bytes("r-order-1")
        .await
        .unwrap();
    let mut seen = receive(&mut runs, 8).await;
    assert_quiet(&mut runs, Duration::from_millis(300)).await;
    seen.sort();
    let orders: Vec<_> = seen
        .iter()
        .filter(|(s, _)| *s == "order")
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(
        orders,
        ["invalid-3", "o1", "o2"],
        "order-1 handled once, invalid-3 run once"
    );
    assert_eq!(seen.iter().filter(|(s, _)| *s == "refund").count(), 5);
    // the limit of 1 was shared by both subscribers, each allowed 4 at once
    assert_eq!(most.load(Ordering::SeqCst), 1);
    let letters = app.dead_letters().recent();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]
            .message
            .headers
            .get(transport::dead_letter::headers::ATTEMPTS),
        Some("1"),
        "dead-lettered at once"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_layer_for_an_unknown_subscriber_is_a_startup_error() {
    let (shop, _runs, _) = shop();
    let error = App::new(memory_config(""))
        .select_module(module_path!())
        .service(shop)
        .layer_for("Shop::ordr", ConcurrencyLimit::new(1))
        .start()
        .await
        .err()
        .expect("an unknown name fails the start");
    let text = error.to_string();
    assert!(
        text.contains("Shop::ordr") && text.contains("Shop::order"),
        "{text}"
    );
}

/// On Redis streams a message's id is its entry's, the producer's travels as the
/// `message-id` field: a producer's retry (a new entry, the same given id) is still
/// handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_streams_a_producers_retry_is_handled_once() {
    if std::net::TcpStream::connect("127.0.0.1:6379").is_err() {
        assert!(!transport_tests::in_ci(), "redis unreachable on 6379 in CI");
        eprintln!("SKIPPED: redis unreachable on 6379 (scripts/brokers up)");
        return;
    }
    let (shop, mut runs, _) = shop();
    let prefix = format!("mw{}.", std::process::id());
    let config = transport::Config::from_toml(&format!(
        "[broker]\nkind = \"redis-streams\"\ntopic_prefix = \"{prefix}\"\n"
    ))
    .unwrap();
    let app = App::new(config)
        .select_module(module_path!())
        .service(shop)
        .layer(Idempotent::new(MemoryStore::new(1000)))
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        app.publisher()
            .to("mw.orders")
            .id("retried-1")
            .send_bytes("o1")
            .await
            .unwrap();
    }
    assert_eq!(receive(&mut runs, 1).await, [("order", "o1".to_string())]);
    assert_quiet(&mut runs, Duration::from_millis(500)).await;
    app.shutdown().await.unwrap();
}

/// A rate limit shared by two subscribers: their handlers' starts, together, keep to it.
mod rate {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use transport::App;
    use transport::middleware::RateLimit;
    use transport_tests::memory_config;

    /// Each handler's start: (subscriber, when).
    static STARTS: Mutex<Vec<(&str, Instant)>> = Mutex::new(Vec::new());

    #[transport::subscriber(topic = "mw.rate.quotes", codec = "text")]
    async fn quote(_text: String) {
        STARTS.lock().unwrap().push(("quote", Instant::now()));
    }

    #[transport::subscriber(topic = "mw.rate.prices", codec = "text")]
    async fn price(_text: String) {
        STARTS.lock().unwrap().push(("price", Instant::now()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rate_limit_spaces_the_starts_of_every_subscriber_it_wraps() {
        // 10 per second: starts at least 100 ms apart, across both subscribers
        let app = App::new(memory_config("concurrency = 4\n"))
            .select_module(module_path!())
            .layer(RateLimit::new(10, Duration::from_secs(1)))
            .start()
            .await
            .unwrap();
        let publisher = app.publisher();
        let began = Instant::now();
        for n in 0..5 {
            publisher
                .to("mw.rate.quotes")
                .send_bytes(format!("q{n}"))
                .await
                .unwrap();
            publisher
                .to("mw.rate.prices")
                .send_bytes(format!("p{n}"))
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while STARTS.lock().unwrap().len() < 10 {
            assert!(Instant::now() < deadline, "not every handler ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut starts = STARTS.lock().unwrap().clone();
        starts.sort_by_key(|(_, at)| *at);
        assert_eq!(starts.iter().filter(|(s, _)| *s == "quote").count(), 5);
        // each start is due 100 ms after the one before, and none runs before it is due
        // (a late one only delays its own record): the k-th is at least k * 100 ms in
        for (k, (_, at)) in starts.iter().enumerate() {
            let earliest =
                (Duration::from_millis(100) * k as u32).saturating_sub(Duration::from_millis(1));
            assert!(
                *at - began >= earliest,
                "start {k} came {:?} in, before {earliest:?}: {starts:?}",
                *at - began
            );
        }
        app.shutdown().await.unwrap();
    }
}
