//! The dispatcher's rules under hostile conditions, on the memory broker and on a
//! scripted backend (for what no real broker lets a test provoke at will): dead letters
//! that must not be lost or re-handled, hung and blocking handlers, subscriptions that
//! end, ordering across retries, topic names, replies, typed publishing and recording.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};
use transport::backend::Delivery;
use transport::dead_letter::headers as dlq;
use transport::prelude::*;
use transport::{App, Config};
use transport_tests::scripted::{Scripted, Settled};
use transport_tests::{PATIENCE, assert_quiet, init_tracing, memory_config, receive};

async fn start(
    module: &'static str,
    config: Config,
    services: impl FnOnce(App) -> App,
) -> transport::Running {
    init_tracing();
    let app = services(App::new(config).select_module(module));
    match app.start().await {
        Ok(running) => running,
        Err(error) => panic!("app failed to start: {error}"),
    }
}

/// Runs a handler that always fails, counting its runs.
pub struct Failing(pub UnboundedSender<u32>);

mod dead_letters {
    use super::*;

    #[transport::service]
    impl Failing {
        #[subscriber(topic = "dl.fail", codec = "text")]
        async fn fail(&self, _text: String, ctx: &Context) -> Result<(), Error> {
            let _ = self.0.send(ctx.attempt());
            Err(Error::msg("always"))
        }
    }

    /// A delivery the broker counts over `max_attempts` (handed back at earlier stops,
    /// never handled) still runs its handler: broker delivery counts include hand-backs.
    #[tokio::test]
    async fn a_delivery_counted_over_its_attempts_still_runs_its_handler_once() {
        let (backend, mut settled) = Scripted::new(true);
        let delivery = backend.delivery("late", 4);
        let backend = Arc::new(backend.script(vec![delivery], false));
        let (tx, mut runs) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config("max_attempts = 3"), |app| {
            app.service(Failing(tx)).backend(backend.clone())
        })
        .await;
        assert_eq!(receive(&mut runs, 1).await, [4], "run once");
        assert_eq!(
            receive(&mut settled, 1).await,
            [Settled::Ack("late".into())]
        );
        assert_quiet(&mut runs, Duration::from_millis(100)).await;
        let published = backend.published();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].0, "dl.fail.dlq");
        assert_eq!(published[0].1.headers.get(dlq::ERROR_KIND), Some("handler"));
        app.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_dead_letter_publish_is_retried_and_the_handler_does_not_run_again() {
        // a backend that does not redeliver: the dispatcher retries the publish in place
        let (backend, mut settled) = Scripted::new(false);
        let delivery = backend.delivery("doomed", 1);
        let backend = Arc::new(
            backend
                .script(vec![delivery], false)
                .fail_publishes("dl.fail.dlq", 3),
        );
        let (tx, mut runs) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config("max_attempts = 2"), |app| {
            app.service(Failing(tx)).backend(backend.clone())
        })
        .await;
        assert_eq!(receive(&mut runs, 2).await, [1, 2]);
        assert_eq!(
            receive(&mut settled, 1).await,
            [Settled::Ack("doomed".into())]
        );
        assert_quiet(&mut runs, Duration::from_millis(100)).await;
        assert_eq!(backend.published().len(), 1, "published once it worked");
        assert_eq!(app.dead_letters().failed_count(), 3);
        assert_eq!(app.dead_letters().published_count(), 1);
        app.shutdown().await.unwrap();
    }

    /// Even where the broker redelivers, a failed dead-letter publish is retried in
    /// place: handing the message back would let it run its handler again.
    #[tokio::test]
    async fn on_a_redelivering_broker_a_failed_dead_letter_publish_is_retried_in_place() {
        let (backend, mut settled) = Scripted::new(true);
        let delivery = backend.delivery("doomed", 1);
        let backend = Arc::new(
            backend
                .script(vec![delivery], false)
                .fail_publishes("dl.fail.dlq", 2),
        );
        let (tx, mut runs) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config("max_attempts = 1"), |app| {
            app.service(Failing(tx)).backend(backend.clone())
        })
        .await;
        assert_eq!(receive(&mut runs, 1).await, [1]);
        assert_eq!(
            receive(&mut settled, 1).await,
            [Settled::Ack("doomed".into())]
        );
        assert_quiet(&mut runs, Duration::from_millis(100)).await;
        assert_eq!(app.dead_letters().failed_count(), 2);
        assert_eq!(backend.published().len(), 1);
        app.shutdown().await.unwrap();
    }

    /// A broker whose limit is lower than it said (a stream's own `max_msg_size`): the
    /// dead letter is fitted under the limit it reports, not retried forever.
    #[tokio::test]
    async fn a_dead_letter_over_a_lower_broker_limit_is_fitted_under_it() {
        let (backend, mut settled) = Scripted::new(true);
        let delivery = Delivery::new(Message::new(vec![b'x'; 5_000]), 1, Box::new(NoAck));
        let _ = &mut settled;
        let backend = Arc::new(
            backend
                .script(vec![delivery], false)
                .limit_publishes("dl.fail.dlq", 1_000),
        );
        let (tx, mut runs) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config("max_attempts = 1"), |app| {
            app.service(Failing(tx)).backend(backend.clone())
        })
        .await;
        assert_eq!(receive(&mut runs, 1).await, [1]);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while backend.published().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let published = backend.published();
        assert_eq!(published.len(), 1, "fitted and published");
        let letter = &published[0].1;
        assert!(letter.payload.len() < 1_000, "{}", letter.payload.len());
        assert_eq!(letter.headers.get(dlq::TRUNCATED_FROM), Some("5000"));
        app.shutdown().await.unwrap();
    }

    struct NoAck;
    impl transport::backend::Acknowledge for NoAck {
        fn ack(self: Box<Self>) {}
        fn nack(self: Box<Self>, _delay: Duration) {}
    }

    #[tokio::test]
    async fn dead_letters_stay_visible_when_nobody_consumes_the_dead_letter_topic() {
        let (tx, mut runs) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config("max_attempts = 1"), |app| {
            app.service(Failing(tx))
        })
        .await;
        app.publisher()
            .to("dl.fail")
            .id("order-7")
            .send_bytes(&b"payload"[..])
            .await
            .unwrap();
        receive(&mut runs, 1).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while app.dead_letters().recent().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let recent = app.dead_letters().recent();
        assert_eq!(recent.len(), 1, "kept by the App");
        assert_eq!(recent[0].topic, "dl.fail.dlq");
        assert_eq!(&recent[0].message.payload[..], b"payload");
        assert_eq!(
            recent[0].message.headers.get(dlq::ORIGINAL_ID),
            Some("order-7")
        );
        assert_ne!(recent[0].message.id.as_deref(), Some("order-7"), "a new id");
        assert_eq!(
            recent[0].message.headers.get("correlation-id"),
            Some("order-7")
        );
        app.shutdown().await.unwrap();
    }
}

mod oversized {
    use super::*;

    pub struct Sink(pub UnboundedSender<usize>);

    #[transport::service]
    impl Sink {
        #[subscriber(topic = "dl.big", codec = "bytes")]
        async fn take(&self, payload: bytes::Bytes) {
            let _ = self.0.send(payload.len());
        }
    }

    #[tokio::test]
    async fn a_consumed_message_over_max_message_bytes_is_dead_lettered_undecoded() {
        let config = memory_config("");
        let mut small = config.clone();
        small.broker.max_message_bytes = 1_000;
        let (tx, mut taken) = mpsc::unbounded_channel();
        // the consumer takes at most 1,000 bytes; a producer with the default limit
        // sends 5,000 through the same broker
        let consumer = start(module_path!(), small, |app| app.service(Sink(tx))).await;
        let producer = App::new(config).select(|_| false).start().await.unwrap();
        let dead = producer.record("dl.big.dlq").await.unwrap();
        producer
            .publisher()
            .to("dl.big")
            .send_bytes(vec![1u8; 5_000])
            .await
            .unwrap();
        producer
            .publisher()
            .to("dl.big")
            .send_bytes(vec![2u8; 10])
            .await
            .unwrap();
        assert_eq!(
            receive(&mut taken, 1).await,
            [10],
            "the small one is handled"
        );
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(letters.len(), 1);
        assert_eq!(
            letters[0].payload.len(),
            5_000,
            "the dead letter is not held to the publish limit"
        );
        assert_eq!(letters[0].headers.get(dlq::ERROR_KIND), Some("too-large"));
        consumer.shutdown().await.unwrap();
        producer.shutdown().await.unwrap();
    }
}

mod timeouts {
    use super::*;

    pub struct Sleepy(pub UnboundedSender<u32>);

    #[transport::service]
    impl Sleepy {
        #[subscriber(topic = "dl.sleepy")]
        async fn sleep_first(&self, _n: u32, ctx: &Context) {
            let _ = self.0.send(ctx.attempt());
            if ctx.attempt() == 1 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    }

    #[tokio::test]
    async fn a_handler_over_its_timeout_fails_the_attempt_and_is_retried() {
        let (tx, mut attempts) = mpsc::unbounded_channel();
        let app = start(
            module_path!(),
            memory_config("handler_timeout = \"100ms\""),
            |app| app.service(Sleepy(tx)),
        )
        .await;
        app.publisher().publish("dl.sleepy", &1).await.unwrap();
        assert_eq!(receive(&mut attempts, 2).await, [1, 2]);
        assert_quiet(&mut attempts, Duration::from_millis(200)).await;
        app.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_hung_handler_is_dead_lettered_with_kind_timeout() {
        let (tx, mut attempts) = mpsc::unbounded_channel();
        let app = start(
            module_path!(),
            memory_config("handler_timeout = \"50ms\"\nmax_attempts = 1"),
            |app| app.service(Sleepy(tx)),
        )
        .await;
        let dead = app.record("dl.sleepy.dlq").await.unwrap();
        app.publisher().publish("dl.sleepy", &1).await.unwrap();
        assert_eq!(receive(&mut attempts, 1).await, [1]);
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(letters[0].headers.get(dlq::ERROR_KIND), Some("timeout"));
        app.shutdown().await.unwrap();
    }
}

mod parallelism {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Blocking {
        pub running: AtomicUsize,
        pub peak: UnboundedSender<usize>,
    }

    #[transport::service]
    impl Blocking {
        /// Blocks its thread (no await) until a sibling runs too, for at most 3 s.
        #[subscriber(topic = "dl.blocking")]
        async fn block(&self, _n: u32) {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            let start = std::time::Instant::now();
            let mut peak = now;
            while start.elapsed() < Duration::from_secs(3) {
                peak = peak.max(self.running.load(Ordering::SeqCst));
                if peak >= 2 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = self.peak.send(peak);
            // stay in the handler a little so the sibling sees us too
            std::thread::sleep(Duration::from_millis(50));
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn concurrency_runs_handlers_in_parallel_even_when_one_blocks_its_thread() {
        let (peak, mut peaks) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config("concurrency = 2"), |app| {
            app.service(Blocking {
                running: AtomicUsize::new(0),
                peak,
            })
        })
        .await;
        app.publisher().publish("dl.blocking", &1).await.unwrap();
        app.publisher().publish("dl.blocking", &2).await.unwrap();
        let seen = receive(&mut peaks, 2).await;
        assert_eq!(seen, [2, 2], "both handlers ran at the same time");
        app.shutdown().await.unwrap();
    }
}

mod blocked_shutdown {
    use super::*;

    pub struct Blocker(pub UnboundedSender<()>);

    #[transport::service]
    impl Blocker {
        /// Blocks its thread, never yielding: it cannot be cancelled.
        #[subscriber(topic = "dl.blocker")]
        async fn block(&self, _n: u32) {
            let _ = self.0.send(());
            std::thread::sleep(Duration::from_secs(4));
        }
    }

    async fn shutdown_is_bounded(concurrency: u32) {
        let (tx, mut started) = mpsc::unbounded_channel();
        let config = memory_config(&format!(
            "concurrency = {concurrency}\n[shutdown]\ndrain_timeout = \"200ms\""
        ));
        let app = start(module_path!(), config, |app| app.service(Blocker(tx))).await;
        app.publisher().publish("dl.blocker", &1).await.unwrap();
        receive(&mut started, 1).await;
        let began = std::time::Instant::now();
        app.shutdown().await.unwrap();
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "shutdown waited {:?} for a handler blocking its thread",
            began.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn shutdown_does_not_wait_for_a_blocked_handler_on_its_own_task() {
        shutdown_is_bounded(2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn shutdown_does_not_wait_for_a_blocked_handler_on_the_subscribers_task() {
        shutdown_is_bounded(1).await;
    }
}

mod resubscription {
    use super::*;

    pub struct Seen(pub UnboundedSender<String>);

    #[transport::service]
    impl Seen {
        #[subscriber(topic = "dl.ends", codec = "text")]
        async fn seen(&self, text: String) {
            let _ = self.0.send(text);
        }
    }

    #[tokio::test]
    async fn a_subscription_the_backend_ends_is_subscribed_again() {
        let (backend, _settled) = Scripted::new(true);
        let first = backend.delivery("one", 1);
        let second = backend.delivery("two", 1);
        let backend = Arc::new(
            backend
                .script(vec![first], true)
                .script(vec![second], false),
        );
        let (tx, mut seen) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config(""), |app| {
            app.service(Seen(tx)).backend(backend.clone())
        })
        .await;
        assert_eq!(receive(&mut seen, 2).await, ["one", "two"]);
        assert_eq!(backend.subscribes(), 2);
        app.shutdown().await.unwrap();
    }
}

mod ordering {
    use super::*;

    pub struct FailsTwoOnce(pub UnboundedSender<(u32, u32)>);

    #[transport::service]
    impl FailsTwoOnce {
        #[subscriber(topic = "dl.ordered")]
        async fn handle(&self, n: u32, ctx: &Context) -> Result<(), Error> {
            let _ = self.0.send((n, ctx.attempt()));
            if n == 2 && ctx.attempt() == 1 {
                return Err(Error::msg("not yet"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn ordered_retries_in_place_before_the_next_message() {
        let (tx, mut seen) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config("ordered = true"), |app| {
            app.service(FailsTwoOnce(tx))
        })
        .await;
        for n in 1..=4u32 {
            app.publisher().publish("dl.ordered", &n).await.unwrap();
        }
        assert_eq!(
            receive(&mut seen, 5).await,
            [(1, 1), (2, 1), (2, 2), (3, 1), (4, 1)]
        );
        app.shutdown().await.unwrap();
    }

    #[test]
    fn ordered_needs_concurrency_one() {
        let error = Config::from_toml("[subscriber]\nordered = true\nconcurrency = 4").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid value for `subscriber.ordered`: needs concurrency = 1 (it is 4): handlers running in parallel have no order"
        );
    }
}

mod topic_names {
    use super::*;

    pub struct Wild;

    /// A literal `"dl.orders.*"` is a compile error (ui-tests `wildcard_topic`); a name
    /// from a constant is checked at startup.
    pub const ALL_ORDERS: Topic<u32> = Topic::new("dl.orders.*");

    #[transport::service]
    impl Wild {
        #[subscriber(topic = ALL_ORDERS)]
        async fn all(&self, _n: u32) {}
    }

    #[tokio::test]
    async fn a_wildcard_topic_is_a_startup_error_naming_the_subscriber() {
        init_tracing();
        let error = match App::new(memory_config(""))
            .select_module(module_path!())
            .service(Wild)
            .start()
            .await
        {
            Ok(_) => panic!("a wildcard topic must not start"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("Wild::all"), "{error}");
        assert!(error.contains("`dl.orders.*`"), "{error}");
        assert!(error.contains("wildcard"), "{error}");
        assert!(
            error.contains("dead-letter topic `dl.orders.*.dlq`"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn publishing_to_an_invalid_topic_is_an_error() {
        let app = App::new(memory_config(""))
            .select(|_| false)
            .start()
            .await
            .unwrap();
        for bad in ["a.*", "a..b", "", "a b", "sensor.>"] {
            let error = app.publisher().publish(bad, &1).await.unwrap_err();
            assert!(
                error.to_string().contains("invalid topic"),
                "{bad}: {error}"
            );
        }
        app.shutdown().await.unwrap();
    }

    /// Names a backend found valid are remembered per thread, by backend: one that passed
    /// on one backend is still checked on another, and a refused one every time.
    #[tokio::test]
    async fn a_name_valid_on_one_backend_is_checked_again_on_another() {
        let plain = App::new(memory_config(""))
            .select(|_| false)
            .start()
            .await
            .unwrap();
        let config = transport::Config::from_toml(&format!(
            "[broker]\nkind = \"memory\"\nname = \"{}\"\ntopic_prefix = \"tenant-a.\"\n",
            transport_tests::unique("broker")
        ))
        .unwrap();
        let prefixed = App::new(config).select(|_| false).start().await.unwrap();
        // valid alone, too long once prefixed
        let long = "t".repeat(transport::backend::MAX_TOPIC_BYTES - 2);
        for _ in 0..2 {
            plain.publisher().publish(&long, &1).await.unwrap();
            let error = prefixed.publisher().publish(&long, &1).await.unwrap_err();
            assert!(error.to_string().contains("invalid topic"), "{error}");
            assert!(plain.publisher().publish("a.*", &1).await.is_err());
        }
        plain.shutdown().await.unwrap();
        prefixed.shutdown().await.unwrap();
    }
}

/// Ordering lanes (a Kafka partition each): with `concurrency > 1`, one delivery per lane
/// at a time and in order, while lanes run side by side.
mod lanes {
    use super::*;

    pub struct Tracks(pub UnboundedSender<(&'static str, String)>);

    #[transport::service]
    impl Tracks {
        #[subscriber(topic = "dl.lanes", codec = "text")]
        async fn handle(&self, text: String) {
            let _ = self.0.send(("start", text.clone()));
            // the first of each lane takes longest: a lane that ran ahead would show
            let pause = if text.ends_with('0') { 60 } else { 5 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let _ = self.0.send(("end", text));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_runs_in_order_while_lanes_run_side_by_side() {
        let (backend, _settled) = Scripted::new(false);
        let mut deliveries = Vec::new();
        for n in 0..4 {
            for (lane, name) in [(0, "a"), (1, "b")] {
                deliveries.push(backend.delivery(&format!("{name}{n}"), 1).in_lane(lane));
            }
        }
        let backend = Arc::new(backend.script(deliveries, false));
        let (tx, mut events) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config("concurrency = 4"), |app| {
            app.service(Tracks(tx)).backend(backend.clone())
        })
        .await;
        let events = receive(&mut events, 16).await;
        for lane in ["a", "b"] {
            let mine: Vec<_> = events
                .iter()
                .filter(|(_, text)| text.starts_with(lane))
                .map(|(what, text)| format!("{what} {text}"))
                .collect();
            let expected: Vec<_> = (0..4)
                .flat_map(|n| [format!("start {lane}{n}"), format!("end {lane}{n}")])
                .collect();
            assert_eq!(mine, expected, "lane {lane}: one at a time, in order");
        }
        // the lanes overlapped: b0 started before a0 ended
        let position = |event: (&str, &str)| {
            events
                .iter()
                .position(|(what, text)| (*what, text.as_str()) == event)
                .unwrap()
        };
        assert!(
            position(("start", "b0")) < position(("end", "a0")),
            "{events:?}"
        );
        app.shutdown().await.unwrap();
    }
}

/// Deferred delivery and batches through the publisher.
mod publishing {
    use super::*;

    pub struct Times(pub UnboundedSender<(u32, tokio::time::Instant)>);

    #[transport::service]
    impl Times {
        #[subscriber(topic = "dl.timed")]
        async fn timed(&self, n: u32) {
            let _ = self.0.send((n, tokio::time::Instant::now()));
        }
    }

    #[tokio::test]
    async fn a_deferred_message_arrives_after_its_delay_and_a_batch_arrives_whole() {
        let (tx, mut seen) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config(""), |app| {
            app.service(Times(tx))
        })
        .await;
        let sent = tokio::time::Instant::now();
        app.publisher()
            .to("dl.timed")
            .deliver_after(Duration::from_millis(300))
            .send(&1u32)
            .await
            .unwrap();
        app.publisher()
            .publish_all("dl.timed", &[2u32, 3, 4])
            .await
            .unwrap();
        let got = receive(&mut seen, 4).await;
        let order: Vec<u32> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, [2, 3, 4, 1], "the deferred one comes last");
        assert!(
            got[3].1 - sent >= Duration::from_millis(300),
            "{:?}",
            got[3].1 - sent
        );
        app.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_broker_without_deferred_delivery_refuses_it() {
        let (backend, _settled) = Scripted::new(false);
        let backend = Arc::new(backend.script(vec![], false));
        let app = start(module_path!(), memory_config(""), |app| {
            app.select(|_| false).backend(backend.clone())
        })
        .await;
        let error = app
            .publisher()
            .to("dl.timed")
            .deliver_after(Duration::from_secs(1))
            .send(&1u32)
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("scripted cannot defer a message's delivery"),
            "{error}"
        );
        assert!(backend.published().is_empty(), "nothing delivered early");
        app.shutdown().await.unwrap();
    }
}

/// MQTT filters on the in-process broker, which matches them itself (the mqtt backend's
/// are the broker's: `interop_mqtt`).
mod mqtt_filters {
    use super::*;

    pub struct Map(pub UnboundedSender<(String, u32, u32)>);

    pub mod sensors {
        use super::*;

        pub struct Sensors(pub UnboundedSender<String>);

        #[transport::service]
        impl Sensors {
            #[subscriber(mqtt_filter = "sensors/+/temperature")]
            async fn temperature(&self, _celsius: f64, ctx: &Context) {
                let _ = self.0.send(ctx.topic().to_string());
            }
        }
    }
    use sensors::Sensors;

    /// Selects the subscribers of one service of this module.
    fn only(
        service: &'static str,
    ) -> impl Fn(&transport::registry::Registration) -> bool + Send + Sync + 'static {
        move |registration| registration.name.starts_with(service)
    }

    #[transport::service]
    impl Map {
        /// Fails the first attempt of 7 and every attempt of 9.
        #[subscriber(mqtt_filter = "/hfp/v2/+/bus/#", group = "map")]
        async fn position(&self, value: u32, ctx: &Context) -> Result<(), Error> {
            let _ = self.0.send((ctx.topic().to_string(), value, ctx.attempt()));
            match value {
                7 if ctx.attempt() == 1 => Err(Error::msg("once")),
                9 => Err(Error::msg("always")),
                _ => Ok(()),
            }
        }
    }

    #[tokio::test]
    async fn a_filter_subscriber_gets_every_matching_topic_and_sees_which() {
        let (tx, mut seen) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config("max_attempts = 2"), |app| {
            app.select(only("Map::")).service(Map(tx))
        })
        .await;
        let publisher = app.publisher();
        let dead = app.record("Map.position.dlq").await.unwrap();
        for (topic, value) in [
            ("/hfp/v2/journey/bus/0018/00423", 1),
            ("/hfp/v2/journey/tram/0040/00012", 2), // another level: not matched
            ("/hfp/v2/deadrun/bus", 3),             // `#` matches the parent level too
            ("hfp/v2/journey/bus/1", 4),            // no leading `/`: not matched
            ("/hfp/v2/journey/bus/0018/00424", 7),
            ("/hfp/v2/journey/bus/0018/00425", 9),
        ] {
            publisher.publish(topic, &value).await.unwrap();
        }
        let mut got = receive(&mut seen, 6).await;
        got.sort_by_key(|(_, value, attempt)| (*value, *attempt));
        assert_eq!(
            got,
            [
                ("/hfp/v2/journey/bus/0018/00423".to_string(), 1, 1),
                ("/hfp/v2/deadrun/bus".to_string(), 3, 1),
                ("/hfp/v2/journey/bus/0018/00424".to_string(), 7, 1),
                // a retry keeps the concrete topic
                ("/hfp/v2/journey/bus/0018/00424".to_string(), 7, 2),
                ("/hfp/v2/journey/bus/0018/00425".to_string(), 9, 1),
                ("/hfp/v2/journey/bus/0018/00425".to_string(), 9, 2),
            ]
        );
        // the dead letter goes to a topic named for the subscriber, naming the concrete topic
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(
            letters[0].headers.get(dlq::ORIGINAL_TOPIC),
            Some("/hfp/v2/journey/bus/0018/00425")
        );
        assert_quiet(&mut seen, Duration::from_millis(100)).await;
        app.shutdown().await.unwrap();
    }

    /// Dotted names are matched in their MQTT form, as the mqtt backend publishes them.
    #[tokio::test]
    async fn dotted_names_match_filters_level_by_level() {
        let (tx, mut seen) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config(""), |app| {
            app.select(only("Sensors::")).service(Sensors(tx))
        })
        .await;
        let publisher = app.publisher();
        publisher
            .publish("sensors.lab.temperature", &21.5)
            .await
            .unwrap();
        publisher
            .publish("sensors.lab.humidity", &40.0)
            .await
            .unwrap();
        publisher
            .publish("sensors/roof/temperature", &3.0)
            .await
            .unwrap();
        let mut got = receive(&mut seen, 2).await;
        got.sort();
        assert_eq!(got, ["sensors.lab.temperature", "sensors/roof/temperature"]);
        assert_quiet(&mut seen, Duration::from_millis(100)).await;
        app.shutdown().await.unwrap();
    }

    /// Only mqtt and memory subscribe to filters: elsewhere it is a startup error naming
    /// the subscriber, before anything connects.
    #[test]
    fn a_backend_without_filters_refuses_them_at_startup() {
        for kind in ["nats", "jetstream", "redis", "redis-streams", "rabbitmq"] {
            let config = Config::from_toml(&format!("[broker]\nkind = \"{kind}\"")).unwrap();
            let error = App::new(config)
                .select(only("Sensors::"))
                .service(Sensors(mpsc::unbounded_channel().0))
                .check()
                .unwrap_err()
                .to_string();
            assert!(error.contains("Sensors::temperature"), "{kind}: {error}");
            assert!(
                error.contains("`sensors/+/temperature`")
                    && error.contains(&format!("the {kind} backend cannot subscribe to one")),
                "{kind}: {error}"
            );
        }
        let config = Config::from_toml("[broker]\nkind = \"mqtt\"").unwrap();
        App::new(config)
            .select(only("Sensors::"))
            .service(Sensors(mpsc::unbounded_channel().0))
            .check()
            .unwrap();
    }
}

mod replies {
    use super::*;

    pub struct Echo;

    #[transport::service]
    impl Echo {
        #[subscriber(topic = "dl.request", reply = "dl.reply")]
        async fn echo(&self, n: i64, ctx: &Context) -> Result<i64, Error> {
            ctx.set_reply_header("x-served-by", "echo");
            Ok(n)
        }
    }

    #[tokio::test]
    async fn a_reply_keeps_the_correlation_and_trace_headers_and_adds_the_handlers() {
        let app = start(module_path!(), memory_config(""), |app| app.service(Echo)).await;
        let replies = app.record("dl.reply").await.unwrap();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        app.publisher()
            .to("dl.request")
            .id("msg-1")
            .header("correlation-id", "conv-9")
            .header("traceparent", traceparent)
            .header("x-request-id", "r-1")
            .header("private", "not copied")
            .send(&5)
            .await
            .unwrap();
        app.publisher()
            .to("dl.request")
            .id("msg-2")
            .send(&6)
            .await
            .unwrap();
        // published without an id: the publisher gives it one, so the reply names it
        app.publisher().publish("dl.request", &7).await.unwrap();
        let got = replies.wait_for(3, PATIENCE).await;
        let first = got
            .iter()
            .find(|m| &m.payload[..] == b"5")
            .expect("reply to 5");
        assert_eq!(first.headers.get("correlation-id"), Some("conv-9"));
        // in the request's trace, as a child of the handler's delivery (not a copy)
        let reply_trace = first
            .headers
            .get("traceparent")
            .and_then(transport::trace::TraceContext::parse)
            .expect("the reply carries a traceparent");
        let request_trace = transport::trace::TraceContext::parse(traceparent).unwrap();
        assert_eq!(reply_trace.trace_id(), request_trace.trace_id());
        assert_ne!(reply_trace.span_id(), request_trace.span_id());
        assert_eq!(first.headers.get("x-request-id"), Some("r-1"));
        assert_eq!(first.headers.get("x-served-by"), Some("echo"));
        assert_eq!(first.headers.get("private"), None);
        let second = got
            .iter()
            .find(|m| &m.payload[..] == b"6")
            .expect("reply to 6");
        assert_eq!(
            second.headers.get("correlation-id"),
            Some("msg-2"),
            "without a correlation id, the request's message id"
        );
        let third = got
            .iter()
            .find(|m| &m.payload[..] == b"7")
            .expect("reply to 7");
        let correlation = third.headers.get("correlation-id");
        assert!(
            correlation.is_some_and(transport::is_generated_id),
            "a request published without an id is still correlated: {correlation:?}"
        );
        app.shutdown().await.unwrap();
    }
}

mod typed {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct Reading {
        pub celsius: f64,
    }

    pub const READINGS: Topic<Reading> = Topic::new("dl.readings");

    #[tokio::test]
    async fn the_typed_builder_and_the_typed_recording() {
        let app = App::new(Config::for_test())
            .select(|_| false)
            .start()
            .await
            .unwrap();
        let recording = app.record(&READINGS).await.unwrap();
        app.publisher()
            .to(&READINGS)
            .header("site", "lab")
            .key("probe-7")
            .send(&Reading { celsius: 21.5 })
            .await
            .unwrap();
        let values = recording.wait_for(1, PATIENCE).await.unwrap();
        assert_eq!(values, [Reading { celsius: 21.5 }]);
        let raw = recording.raw().messages();
        assert_eq!(raw[0].headers.get("site"), Some("lab"));
        assert_eq!(raw[0].key.as_deref(), Some("probe-7"));
        app.shutdown().await.unwrap();
    }
}

mod isolation {
    use super::*;

    pub struct Grouped(pub UnboundedSender<u32>);

    #[transport::service]
    impl Grouped {
        #[subscriber(topic = "dl.isolated", group = "workers")]
        async fn work(&self, n: u32) {
            let _ = self.0.send(n);
        }
    }

    /// Two "tests" at once, each with `Config::for_test()`: neither steals the other's
    /// group messages.
    #[tokio::test]
    async fn apps_with_test_configs_share_nothing() {
        let (tx_a, mut a) = mpsc::unbounded_channel();
        let (tx_b, mut b) = mpsc::unbounded_channel();
        let app_a = start(module_path!(), Config::for_test(), |app| {
            app.service(Grouped(tx_a))
        })
        .await;
        let app_b = start(module_path!(), Config::for_test(), |app| {
            app.service(Grouped(tx_b))
        })
        .await;
        for n in 0..20 {
            app_a.publisher().publish("dl.isolated", &n).await.unwrap();
        }
        assert_eq!(receive(&mut a, 20).await, (0..20).collect::<Vec<_>>());
        assert_quiet(&mut b, Duration::from_millis(100)).await;
        app_a.shutdown().await.unwrap();
        app_b.shutdown().await.unwrap();
    }
}

/// A handler says what its error means: retry after a delay it chooses, dead-letter now,
/// or drop the message.
mod verdicts {
    use super::*;
    use std::time::Instant;

    /// Reports (subscriber, attempt, when) for every run.
    pub struct Judged(pub UnboundedSender<(&'static str, u32, Instant)>);

    #[transport::service]
    impl Judged {
        #[subscriber(topic = "verdict.later", codec = "text")]
        async fn later(&self, _text: String, ctx: &Context) -> Result<(), Error> {
            let _ = self.0.send(("later", ctx.attempt(), Instant::now()));
            if ctx.attempt() == 1 {
                return Err(Error::msg("busy").retry_after(Duration::from_millis(400)));
            }
            Ok(())
        }

        #[subscriber(topic = "verdict.now", codec = "text")]
        async fn now(&self, _text: String, ctx: &Context) -> Result<(), Error> {
            let _ = self.0.send(("now", ctx.attempt(), Instant::now()));
            Err(Error::msg("malformed order").dead_letter())
        }

        #[subscriber(topic = "verdict.drop", codec = "text")]
        async fn drop_it(&self, _text: String, ctx: &Context) -> Result<(), Error> {
            let _ = self.0.send(("drop", ctx.attempt(), Instant::now()));
            Err(Error::msg("stale").discard())
        }
    }

    #[tokio::test]
    async fn retry_after_waits_its_delay_dead_letter_skips_retries_and_discard_drops() {
        let (tx, mut runs) = mpsc::unbounded_channel();
        // the policy's own backoff is 10 ms: a 400 ms gap is the handler's
        let app = start(module_path!(), memory_config("max_attempts = 5"), |app| {
            app.service(Judged(tx))
        })
        .await;
        for topic in ["verdict.later", "verdict.now", "verdict.drop"] {
            app.publisher().publish(topic, &"x").await.unwrap();
        }
        let mut seen = receive(&mut runs, 4).await;
        assert_quiet(&mut runs, Duration::from_millis(300)).await;
        seen.sort_by_key(|(name, attempt, _)| (*name, *attempt));
        let names: Vec<_> = seen
            .iter()
            .map(|(name, attempt, _)| (*name, *attempt))
            .collect();
        assert_eq!(
            names,
            [("drop", 1), ("later", 1), ("later", 2), ("now", 1)],
            "one run each, two for `later`"
        );
        let gap = seen[2].2 - seen[1].2;
        assert!(gap >= Duration::from_millis(400), "retried after {gap:?}");
        // only `now` was dead-lettered, after its one attempt
        let letters = app.dead_letters().recent();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0].topic, "verdict.now.dlq");
        assert_eq!(letters[0].message.headers.get(dlq::ATTEMPTS), Some("1"));
        app.shutdown().await.unwrap();
    }
}
