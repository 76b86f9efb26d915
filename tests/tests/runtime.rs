//! The runtime's behaviour on the embedded memory broker: delivery semantics, codecs,
//! replies, retry and dead-letter, panics, bad payloads, drain, and startup errors.
//! Each module declares its own services and runs only them (`select_module`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};
use transport::prelude::*;
use transport::{App, Config};
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

mod fan_out_and_groups {
    use super::*;

    pub struct Consumer {
        pub app: u32,
        pub seen: UnboundedSender<(u32, &'static str, u32)>,
    }

    #[transport::service]
    impl Consumer {
        #[subscriber(topic = "rt.events")]
        async fn every(&self, n: u32) {
            let _ = self.seen.send((self.app, "every", n));
        }

        #[subscriber(topic = "rt.events", group = "workers")]
        async fn worker(&self, n: u32) {
            let _ = self.seen.send((self.app, "workers", n));
        }

        #[subscriber(topic = "rt.events", group = "auditors")]
        async fn auditor(&self, n: u32) {
            let _ = self.seen.send((self.app, "auditors", n));
        }
    }

    #[tokio::test]
    async fn no_group_fans_out_and_each_group_gets_each_message_once() {
        let config = memory_config("");
        let (seen, mut rx) = mpsc::unbounded_channel();
        let one = start(module_path!(), config.clone(), |app| {
            app.service(Consumer {
                app: 1,
                seen: seen.clone(),
            })
        })
        .await;
        let two = start(module_path!(), config, |app| {
            app.service(Consumer { app: 2, seen })
        })
        .await;

        const N: u32 = 200;
        for n in 0..N {
            one.publisher().publish("rt.events", &n).await.unwrap();
        }
        // per app: every message to `every`; per group: every message once in all
        let got = receive(&mut rx, (N * 4) as usize).await;
        assert_quiet(&mut rx, Duration::from_millis(200)).await;
        let mut counts: BTreeMap<(&str, u32), Vec<u32>> = BTreeMap::new();
        for (app, which, n) in got {
            let key = if which == "every" {
                (which, app)
            } else {
                (which, 0)
            };
            counts.entry(key).or_default().push(n);
        }
        let all: Vec<u32> = (0..N).collect();
        for key in [("every", 1), ("every", 2), ("workers", 0), ("auditors", 0)] {
            let mut ns = counts.remove(&key).unwrap_or_default();
            ns.sort_unstable();
            assert_eq!(ns, all, "{key:?} must see every message exactly once");
        }
        one.shutdown().await.unwrap();
        two.shutdown().await.unwrap();
    }
}

mod headers_and_context {
    use super::*;

    #[derive(Debug)]
    pub struct Seen {
        headers: Headers,
        key: Option<String>,
        id: Option<String>,
        topic: String,
        group: Option<String>,
        attempt: u32,
        subscriber: &'static str,
    }

    pub struct Probe(pub UnboundedSender<Seen>);

    #[transport::service]
    impl Probe {
        #[subscriber(topic = "rt.headers", group = "probe")]
        async fn look(&self, _body: serde_json::Value, ctx: &Context) -> Result<(), Error> {
            let _ = self.0.send(Seen {
                headers: ctx.headers().clone(),
                key: ctx.key().map(str::to_string),
                id: ctx.message_id().map(str::to_string),
                topic: ctx.topic().to_string(),
                group: ctx.group().map(str::to_string),
                attempt: ctx.attempt(),
                subscriber: ctx.subscriber(),
            });
            Ok(())
        }
    }

    #[tokio::test]
    async fn headers_key_and_id_round_trip_into_the_context() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config(""), |app| {
            app.service(Probe(tx))
        })
        .await;
        app.publisher()
            .to("rt.headers")
            .header("trace-id", "t-123")
            .header("tenant", "acme ünïcode")
            .key("sensor-7")
            .id("msg-1")
            .send(&serde_json::json!({"ok": true}))
            .await
            .unwrap();
        let seen = receive(&mut rx, 1).await.remove(0);
        assert_eq!(seen.headers.get("trace-id"), Some("t-123"));
        assert_eq!(seen.headers.get("tenant"), Some("acme ünïcode"));
        assert_eq!(seen.headers.get("content-type"), Some("application/json"));
        assert_eq!(seen.key.as_deref(), Some("sensor-7"));
        assert_eq!(seen.id.as_deref(), Some("msg-1"));
        assert_eq!(seen.topic, "rt.headers");
        assert_eq!(seen.group.as_deref(), Some("probe"));
        assert_eq!(seen.attempt, 1);
        assert_eq!(seen.subscriber, "Probe::look");
        app.shutdown().await.unwrap();
    }
}

mod codecs {
    use super::*;
    use bytes::Bytes;
    use serde::{Deserialize, Serialize};
    use transport::codec::{Codec, Decoder, Encoder, MsgPack, Protobuf, RawBytes, Text};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Reading {
        pub room: String,
        pub celsius: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProtoReading {
        #[prost(string, tag = "1")]
        pub room: String,
        #[prost(sint32, tag = "2")]
        pub millicelsius: i32,
    }

    /// A codec of the application's own: semicolon-separated fields.
    pub struct Semicolons;
    impl Codec for Semicolons {
        const NAME: &'static str = "semicolons";
        const CONTENT_TYPE: &'static str = "text/x-semicolons";
    }
    impl Encoder<Reading> for Semicolons {
        fn encode(value: &Reading) -> Result<Bytes, transport::CodecError> {
            Ok(format!("{};{}", value.room, value.celsius).into())
        }
    }
    impl Decoder<Reading> for Semicolons {
        fn decode(payload: &Bytes) -> Result<Reading, transport::CodecError> {
            let text = std::str::from_utf8(payload)
                .map_err(|e| transport::CodecError::new(Self::NAME, e))?;
            let (room, celsius) = text
                .split_once(';')
                .ok_or_else(|| transport::CodecError::new(Self::NAME, "missing `;`"))?;
            let celsius = celsius
                .parse()
                .map_err(|e| transport::CodecError::new(Self::NAME, e))?;
            Ok(Reading {
                room: room.into(),
                celsius,
            })
        }
    }

    #[derive(Debug, PartialEq)]
    pub enum Got {
        Json(Reading),
        MsgPack(Reading),
        Protobuf(ProtoReading),
        Text(String),
        Bytes(Bytes),
        Vec(Vec<u8>),
        Custom(Reading),
    }

    pub struct Sink(pub UnboundedSender<Got>);

    #[transport::service]
    impl Sink {
        #[subscriber(topic = "rt.codec.json", codec = "json")]
        async fn json(&self, r: Reading) {
            let _ = self.0.send(Got::Json(r));
        }
        #[subscriber(topic = "rt.codec.msgpack", codec = "msgpack")]
        async fn msgpack(&self, r: Reading) {
            let _ = self.0.send(Got::MsgPack(r));
        }
        #[subscriber(topic = "rt.codec.protobuf", codec = "protobuf")]
        async fn protobuf(&self, r: ProtoReading) {
            let _ = self.0.send(Got::Protobuf(r));
        }
        #[subscriber(topic = "rt.codec.text", codec = "text")]
        async fn text(&self, s: String) {
            let _ = self.0.send(Got::Text(s));
        }
        #[subscriber(topic = "rt.codec.bytes", codec = "bytes")]
        async fn bytes(&self, b: Bytes) {
            let _ = self.0.send(Got::Bytes(b));
        }
        #[subscriber(topic = "rt.codec.vec", codec = "bytes")]
        async fn vec(&self, b: Vec<u8>) {
            let _ = self.0.send(Got::Vec(b));
        }
        #[subscriber(topic = "rt.codec.custom", codec = Semicolons)]
        async fn custom(&self, r: Reading) {
            let _ = self.0.send(Got::Custom(r));
        }
    }

    #[tokio::test]
    async fn every_codec_round_trips_through_a_typed_handler() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config(""), |app| {
            app.service(Sink(tx))
        })
        .await;
        let reading = Reading {
            room: "lab".into(),
            celsius: -3.25,
        };
        let proto = ProtoReading {
            room: "lab".into(),
            millicelsius: -3250,
        };
        let raw = Bytes::from_static(&[0, 1, 254, 255]);
        let p = app.publisher();
        let recording = app.record("rt.codec.msgpack").await.unwrap();

        p.to("rt.codec.json")
            .send_with::<transport::codec::Json, _>(&reading)
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [Got::Json(reading.clone())]);
        p.to("rt.codec.msgpack")
            .send_with::<MsgPack, _>(&reading)
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [Got::MsgPack(reading.clone())]);
        p.to("rt.codec.protobuf")
            .send_with::<Protobuf, _>(&proto)
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [Got::Protobuf(proto)]);
        p.to("rt.codec.text")
            .send_with::<Text, _>("grüße ✓")
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [Got::Text("grüße ✓".into())]);
        p.to("rt.codec.bytes")
            .send_with::<RawBytes, _>(&raw)
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [Got::Bytes(raw.clone())]);
        p.to("rt.codec.vec")
            .send_with::<RawBytes, _>(&raw[..])
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [Got::Vec(raw.to_vec())]);
        p.to("rt.codec.custom")
            .send_with::<Semicolons, _>(&reading)
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [Got::Custom(reading)]);

        let sent = recording.wait_for(1, PATIENCE).await;
        assert_eq!(
            sent[0].headers.get("content-type"),
            Some("application/msgpack")
        );
        app.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_publisher_codec_comes_from_config() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = memory_config("[publisher]\ncodec = \"msgpack\"");
        let app = start(module_path!(), config, |app| app.service(Sink(tx))).await;
        let reading = Reading {
            room: "attic".into(),
            celsius: 30.5,
        };
        app.publisher()
            .publish("rt.codec.msgpack", &reading)
            .await
            .unwrap();
        assert_eq!(receive(&mut rx, 1).await, [Got::MsgPack(reading)]);
        app.shutdown().await.unwrap();
    }
}

mod replies {
    use super::*;

    pub struct Doubler;

    #[transport::service]
    impl Doubler {
        #[subscriber(topic = "rt.request", reply = "rt.reply")]
        async fn double(&self, n: i64) -> Result<i64, Error> {
            if n < 0 {
                return Err(Error::msg("negative"));
            }
            Ok(n * 2)
        }
    }

    #[tokio::test]
    async fn the_ok_value_is_published_to_the_reply_topic() {
        let app = start(module_path!(), memory_config("max_attempts = 1"), |app| {
            app.service(Doubler)
        })
        .await;
        let replies = app.record("rt.reply").await.unwrap();
        let dead = app.record("rt.request.dlq").await.unwrap();
        app.publisher()
            .to("rt.request")
            .id("req-1")
            .key("k")
            .send(&21)
            .await
            .unwrap();
        app.publisher().publish("rt.request", &-1).await.unwrap();
        let got = replies.wait_for(1, PATIENCE).await;
        assert_eq!(&got[0].payload[..], b"42");
        assert_eq!(got[0].headers.get("correlation-id"), Some("req-1"));
        assert_eq!(got[0].headers.get("content-type"), Some("application/json"));
        assert_eq!(got[0].key.as_deref(), Some("k"));
        // an Err publishes nothing to the reply topic and goes the failure path
        assert_eq!(dead.wait_for(1, PATIENCE).await.len(), 1);
        assert_eq!(replies.messages().len(), 1);
        app.shutdown().await.unwrap();
    }
}

mod failures {
    use super::*;
    use serde::Deserialize;
    use transport::dispatch::headers as dlq;

    #[derive(Debug, Deserialize)]
    pub struct Reading {
        pub celsius: f64,
    }

    pub struct Flaky {
        pub attempts: UnboundedSender<(&'static str, u32)>,
        pub handled: UnboundedSender<f64>,
    }

    #[transport::service]
    impl Flaky {
        #[subscriber(topic = "rt.fail")]
        async fn always_fails(&self, n: u32, ctx: &Context) -> Result<(), Error> {
            let _ = self.attempts.send(("fail", ctx.attempt()));
            Err(Error::msg(format!("cannot handle {n}")))
        }

        #[subscriber(topic = "rt.flaky")]
        async fn fails_twice(
            &self,
            _n: u32,
            ctx: &Context,
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let _ = self.attempts.send(("flaky", ctx.attempt()));
            if ctx.attempt() < 3 {
                return Err(Box::new(std::io::Error::other("disk busy")));
            }
            Ok(())
        }

        #[subscriber(topic = "rt.panic")]
        async fn panics_on_zero(&self, n: u32) -> Result<(), Error> {
            if n == 0 {
                panic!("zero is not allowed");
            }
            let _ = self.handled.send(f64::from(n));
            Ok(())
        }

        #[subscriber(topic = "rt.decode")]
        async fn typed(&self, reading: Reading, ctx: &Context) {
            let _ = self.attempts.send(("decode", ctx.attempt()));
            let _ = self.handled.send(reading.celsius);
        }
    }

    fn flaky() -> (
        Flaky,
        mpsc::UnboundedReceiver<(&'static str, u32)>,
        mpsc::UnboundedReceiver<f64>,
    ) {
        let (attempts, attempts_rx) = mpsc::unbounded_channel();
        let (handled, handled_rx) = mpsc::unbounded_channel();
        (Flaky { attempts, handled }, attempts_rx, handled_rx)
    }

    #[tokio::test]
    async fn a_failing_handler_is_retried_then_dead_lettered_with_error_headers() {
        let (service, mut attempts, _) = flaky();
        let app = start(module_path!(), memory_config("max_attempts = 3"), |app| {
            app.service(service)
        })
        .await;
        let dead = app.record("rt.fail.dlq").await.unwrap();
        app.publisher()
            .to("rt.fail")
            .header("trace-id", "t-9")
            .send(&7)
            .await
            .unwrap();

        let got = receive(&mut attempts, 3).await;
        assert_eq!(got, [("fail", 1), ("fail", 2), ("fail", 3)]);
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_quiet(&mut attempts, Duration::from_millis(200)).await;
        assert_eq!(dead.messages().len(), 1, "dead-lettered exactly once");
        let letter = &letters[0];
        assert_eq!(&letter.payload[..], b"7");
        assert_eq!(letter.headers.get(dlq::ERROR), Some("cannot handle 7"));
        assert_eq!(letter.headers.get(dlq::ERROR_KIND), Some("handler"));
        assert_eq!(letter.headers.get(dlq::ATTEMPTS), Some("3"));
        assert_eq!(letter.headers.get(dlq::ORIGINAL_TOPIC), Some("rt.fail"));
        assert_eq!(
            letter.headers.get(dlq::SUBSCRIBER),
            Some("Flaky::always_fails")
        );
        assert_eq!(
            letter.headers.get("trace-id"),
            Some("t-9"),
            "original headers are kept"
        );
        assert!(letter.headers.get(dlq::FAILED_AT).is_some());
        app.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_handler_that_recovers_is_not_dead_lettered() {
        let (service, mut attempts, _) = flaky();
        let app = start(module_path!(), memory_config("max_attempts = 5"), |app| {
            app.service(service)
        })
        .await;
        let dead = app.record("rt.flaky.dlq").await.unwrap();
        app.publisher().publish("rt.flaky", &1).await.unwrap();
        assert_eq!(
            receive(&mut attempts, 3).await,
            [("flaky", 1), ("flaky", 2), ("flaky", 3)]
        );
        assert_quiet(&mut attempts, Duration::from_millis(200)).await;
        assert!(dead.messages().is_empty());
        app.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_boxed_error_reaches_the_dead_letter_headers() {
        let (service, mut attempts, _) = flaky();
        let app = start(module_path!(), memory_config("max_attempts = 2"), |app| {
            app.service(service)
        })
        .await;
        let dead = app.record("rt.flaky.dlq").await.unwrap();
        app.publisher().publish("rt.flaky", &1).await.unwrap();
        receive(&mut attempts, 2).await;
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(letters[0].headers.get(dlq::ERROR), Some("disk busy"));
        app.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_panic_is_caught_treated_as_an_error_and_the_service_goes_on() {
        let (service, _, mut handled) = flaky();
        let app = start(module_path!(), memory_config("max_attempts = 2"), |app| {
            app.service(service)
        })
        .await;
        let dead = app.record("rt.panic.dlq").await.unwrap();
        app.publisher().publish("rt.panic", &0).await.unwrap();
        app.publisher().publish("rt.panic", &5).await.unwrap();
        assert_eq!(receive(&mut handled, 1).await, [5.0]);
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_eq!(letters[0].headers.get(dlq::ERROR_KIND), Some("panic"));
        assert_eq!(letters[0].headers.get(dlq::ATTEMPTS), Some("2"));
        assert_eq!(
            letters[0].headers.get(dlq::ERROR),
            Some("handler panicked: zero is not allowed")
        );
        app.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn an_undecodable_payload_is_dead_lettered_once_and_the_next_is_handled() {
        let (service, mut attempts, mut handled) = flaky();
        let app = start(module_path!(), memory_config("max_attempts = 3"), |app| {
            app.service(service)
        })
        .await;
        let dead = app.record("rt.decode.dlq").await.unwrap();
        app.publisher()
            .to("rt.decode")
            .send_bytes(&b"{\"celsius\": oops"[..])
            .await
            .unwrap();
        app.publisher()
            .publish("rt.decode", &serde_json::json!({"celsius": 19.5}))
            .await
            .unwrap();

        assert_eq!(receive(&mut handled, 1).await, [19.5]);
        assert_eq!(
            receive(&mut attempts, 1).await,
            [("decode", 1)],
            "the handler never saw the bad payload"
        );
        let letters = dead.wait_for(1, PATIENCE).await;
        assert_quiet(&mut attempts, Duration::from_millis(200)).await;
        assert_eq!(dead.messages().len(), 1, "dead-lettered once, not retried");
        assert_eq!(
            &letters[0].payload[..],
            b"{\"celsius\": oops",
            "the payload is kept as it came"
        );
        assert_eq!(letters[0].headers.get(dlq::ERROR_KIND), Some("decode"));
        assert_eq!(letters[0].headers.get(dlq::ATTEMPTS), Some("1"));
        let error = letters[0].headers.get(dlq::ERROR).unwrap_or_default();
        assert!(error.starts_with("json codec: "), "{error}");
        app.shutdown().await.unwrap();
    }
}

mod drain {
    use super::*;

    pub struct Slow {
        pub started: UnboundedSender<u32>,
        pub finished: UnboundedSender<u32>,
    }

    #[transport::service]
    impl Slow {
        #[subscriber(topic = "rt.slow", group = "slow")]
        async fn work(&self, n: u32) {
            let _ = self.started.send(n);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = self.finished.send(n);
        }
    }

    #[tokio::test]
    async fn shutdown_finishes_in_flight_handlers_and_starts_no_new_ones() {
        let (started, mut started_rx) = mpsc::unbounded_channel();
        let (finished, mut finished_rx) = mpsc::unbounded_channel();
        let config = memory_config("concurrency = 2");
        let app = start(module_path!(), config, |app| {
            app.service(Slow { started, finished })
        })
        .await;
        for n in 0..6 {
            app.publisher().publish("rt.slow", &n).await.unwrap();
        }
        let mut in_flight = receive(&mut started_rx, 2).await;
        app.shutdown().await.unwrap();

        let mut done: Vec<u32> = std::iter::from_fn(|| finished_rx.try_recv().ok()).collect();
        in_flight.sort_unstable();
        done.sort_unstable();
        assert_eq!(
            done, in_flight,
            "both in-flight handlers finished before shutdown returned"
        );
        assert!(
            started_rx.try_recv().is_err(),
            "no handler started after shutdown began"
        );
    }

    #[tokio::test]
    async fn the_drain_timeout_bounds_shutdown() {
        let (started, mut started_rx) = mpsc::unbounded_channel();
        let (finished, mut finished_rx) = mpsc::unbounded_channel();
        let config = memory_config("[shutdown]\ndrain_timeout = \"50ms\"");
        let app = start(module_path!(), config, |app| {
            app.service(Slow { started, finished })
        })
        .await;
        app.publisher().publish("rt.slow", &1).await.unwrap();
        receive(&mut started_rx, 1).await;
        let begun = std::time::Instant::now();
        app.shutdown().await.unwrap();
        assert!(
            begun.elapsed() < Duration::from_millis(290),
            "shutdown waited {:?}",
            begun.elapsed()
        );
        assert!(
            finished_rx.try_recv().is_err(),
            "the slow handler was cut off"
        );
    }
}

mod orphan {
    pub struct Orphan;

    #[transport::service]
    impl Orphan {
        #[subscriber(topic = "rt.orphan")]
        async fn handle(&self, _n: u32) {}
    }
}

mod duplicates {
    pub struct Twice;

    #[transport::service]
    impl Twice {
        #[subscriber(topic = "rt.twice", group = "g")]
        async fn first(&self, _n: u32) {}

        #[subscriber(topic = "rt.twice", group = "g")]
        async fn second(&self, _n: u32) {}
    }
}

mod startup_errors {
    use super::*;

    async fn start_error(app: App) -> String {
        match app.start().await {
            Ok(_) => panic!("the app started, but should not have"),
            Err(error) => error.to_string(),
        }
    }

    #[tokio::test]
    async fn a_method_without_its_service_instance_names_it_and_its_location() {
        let message =
            start_error(App::new(memory_config("")).select_module("runtime::orphan")).await;
        let line = line_of("async fn handle(&self, _n: u32) {}");
        assert_eq!(
            message,
            format!(
                "subscriber `Orphan::handle` (tests/tests/runtime.rs:{line}) is a method of `Orphan`, but no `Orphan` instance was provided: call `.service(...)` with one on the App"
            )
        );
    }

    #[tokio::test]
    async fn two_subscribers_on_one_topic_and_group_are_refused() {
        let message = start_error(
            App::new(memory_config(""))
                .select_module("runtime::duplicates")
                .service(duplicates::Twice),
        )
        .await;
        let first = line_of("async fn first(&self, _n: u32) {}");
        let second = line_of("async fn second(&self, _n: u32) {}");
        assert_eq!(
            message,
            format!(
                "subscribers `Twice::first` (tests/tests/runtime.rs:{first}) and `Twice::second` (tests/tests/runtime.rs:{second}) both subscribe to topic `rt.twice` with group `g`: give one of them another group"
            )
        );
    }

    #[tokio::test]
    async fn all_problems_are_reported_together() {
        let message = start_error(App::new(memory_config("")).select(|r| {
            r.module_path.ends_with("runtime::duplicates")
                || r.module_path.ends_with("runtime::orphan")
        }))
        .await;
        assert!(
            message.starts_with("4 problems prevent startup:"),
            "{message}"
        );
        assert!(message.contains("`Orphan::handle`"), "{message}");
        assert!(message.contains("`Twice::first` ("), "{message}");
        assert!(message.contains("no `Twice` instance"), "{message}");
    }

    #[tokio::test]
    async fn an_unknown_backend_kind_is_refused() {
        let config = Config::from_toml("[broker]\nkind = \"kafkaa\"").unwrap();
        let message = start_error(App::new(config).select(|_| false)).await;
        assert!(
            message.starts_with("unknown broker kind `kafkaa` in config (known: memory"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_unknown_codec_in_config_is_refused() {
        let error = Config::from_toml("[publisher]\ncodec = \"yaml\"").unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown codec `yaml` for `publisher.codec` in config (known: json, msgpack)"
        );
    }

    #[tokio::test]
    async fn an_override_for_an_unknown_subscriber_is_refused() {
        let config = memory_config("[subscribers.\"Orphan::handel\"]\nconcurrency = 2");
        let message = start_error(
            App::new(config)
                .select_module("runtime::orphan")
                .service(orphan::Orphan),
        )
        .await;
        assert_eq!(
            message,
            "config section `subscribers.\"Orphan::handel\"` names no registered subscriber (registered: Orphan::handle)"
        );
    }

    #[test]
    fn an_unreadable_config_file_is_refused() {
        let error = match App::from_file("/nonexistent/transport.toml") {
            Ok(_) => panic!("a missing file must be an error"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.starts_with("cannot read config file `/nonexistent/transport.toml`: "),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("transport.toml");
        std::fs::write(&path, "[broker\nkind = ").unwrap();
        let error = match App::from_file(&path) {
            Ok(_) => panic!("broken TOML must be an error"),
            Err(error) => error.to_string(),
        };
        assert!(error.starts_with("invalid configuration: "), "{error}");
    }

    fn line_of(needle: &str) -> usize {
        let source = include_str!("runtime.rs");
        let index = source
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in source"));
        source[..index].matches('\n').count() + 1
    }
}

#[allow(clippy::result_large_err)] // figment::Jail's closure type
mod configuration {
    use transport::Config;

    #[test]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "[broker]\nkind = \"memory\"\n[subscriber]\nmax_attempts = 2\nconcurrency = 3",
            )?;
            jail.set_env("TRANSPORT_CONFIG", "custom.toml");
            jail.set_env("TRANSPORT_SUBSCRIBER__MAX_ATTEMPTS", "7");
            jail.set_env("TRANSPORT_SHUTDOWN__DRAIN_TIMEOUT", "2s");
            let config = Config::from_env().map_err(|e| e.to_string())?;
            assert_eq!(config.subscriber.max_attempts, 7, "env wins");
            assert_eq!(config.subscriber.concurrency, 3, "the file is read");
            assert_eq!(
                config.shutdown.drain_timeout,
                std::time::Duration::from_secs(2)
            );
            Ok(())
        });
    }

    #[test]
    fn transport_toml_in_the_working_directory_is_read_by_default() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("transport.toml", "[publisher]\ncodec = \"msgpack\"")?;
            let config = Config::from_env().map_err(|e| e.to_string())?;
            assert_eq!(config.publisher.codec, "msgpack");
            jail.set_env("TRANSPORT_PUBLISHER__CODEC", "cbor");
            let error = Config::from_env().unwrap_err().to_string();
            assert!(error.contains("unknown codec `cbor`"), "{error}");
            Ok(())
        });
    }
}

mod typed_topics {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Reading {
        pub room: String,
        pub celsius: f64,
    }

    pub const READINGS: Topic<Reading> = Topic::new("rt.typed.readings");

    pub struct Typed(pub UnboundedSender<(&'static str, Reading)>);

    #[transport::service]
    impl Typed {
        #[subscriber(topic = READINGS, group = "typed")]
        async fn typed(&self, reading: Reading) {
            let _ = self.0.send(("typed", reading));
        }

        #[subscriber(topic = "rt.typed.readings", group = "by-name")]
        async fn by_name(&self, reading: Reading) {
            let _ = self.0.send(("by-name", reading));
        }
    }

    #[tokio::test]
    async fn a_typed_publish_reaches_typed_and_string_topic_subscribers() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = start(module_path!(), memory_config(""), |app| {
            app.service(Typed(tx))
        })
        .await;
        let reading = Reading {
            room: "hall".into(),
            celsius: 18.0,
        };
        app.publisher().send(&READINGS, &reading).await.unwrap();
        let mut got = receive(&mut rx, 2).await;
        got.sort_by_key(|(which, _)| *which);
        assert_eq!(got, [("by-name", reading.clone()), ("typed", reading)]);
        let registration = transport::registry::registrations()
            .into_iter()
            .find(|r| r.name == "Typed::typed")
            .expect("registered");
        assert_eq!(registration.topic_const, Some("READINGS"));
        assert_eq!(registration.payload_type, "Reading");
        app.shutdown().await.unwrap();
    }
}

mod programmatic_shutdown {
    use super::*;

    pub struct Counter(pub UnboundedSender<u32>);

    #[transport::service]
    impl Counter {
        #[subscriber(topic = "rt.run")]
        async fn count(&self, n: u32) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = self.0.send(n);
        }
    }

    #[tokio::test]
    async fn run_returns_after_a_shutdown_handle_fires_and_drains_first() {
        init_tracing();
        let config = memory_config("");
        let name = config.broker.name.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(config)
            .select_module(module_path!())
            .service(Counter(tx));
        let stop = app.shutdown_handle();
        let service = tokio::spawn(app.run());

        // a second App on the same in-process broker publishes
        let producer =
            App::new(Config::from_toml(&format!("[broker]\nname = \"{name}\"")).unwrap())
                .select(|_| false)
                .start()
                .await
                .unwrap();
        // wait until the service's subscription exists: publish until one arrives
        let mut n = 0;
        loop {
            producer.publisher().publish("rt.run", &n).await.unwrap();
            n += 1;
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                break;
            }
        }
        producer.publisher().publish("rt.run", &1000).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.shutdown();
        let result = tokio::time::timeout(PATIENCE, service)
            .await
            .expect("run returned");
        result
            .expect("not panicked")
            .expect("run ended without error");
        let rest: Vec<u32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(
            rest.contains(&1000),
            "the in-flight handler finished before run returned: {rest:?}"
        );
        producer.shutdown().await.unwrap();
    }
}

mod full_queue {
    use super::*;

    pub struct Slow {
        pub started: UnboundedSender<u32>,
        pub done: UnboundedSender<u32>,
    }

    #[transport::service]
    impl Slow {
        #[subscriber(topic = "rt.full", group = "slow")]
        async fn work(&self, n: u32) {
            let _ = self.started.send(n);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = self.done.send(n);
        }
    }

    #[tokio::test]
    async fn publishing_to_a_full_in_memory_queue_is_an_error_not_a_wait_and_loses_nothing() {
        let (started, mut started_rx) = mpsc::unbounded_channel();
        let (done, mut done_rx) = mpsc::unbounded_channel();
        let mut config = memory_config("");
        config.broker.queue_capacity = 2;
        let app = start(module_path!(), config, |app| {
            app.service(Slow { started, done })
        })
        .await;
        app.publisher().publish("rt.full", &1).await.unwrap();
        receive(&mut started_rx, 1).await; // 1 is with the handler; the queue is empty
        app.publisher().publish("rt.full", &2).await.unwrap();
        app.publisher().publish("rt.full", &3).await.unwrap();
        let error = tokio::time::timeout(PATIENCE, app.publisher().publish("rt.full", &4))
            .await
            .expect("a full queue answers at once")
            .expect_err("the queue holds two");
        assert!(error.to_string().contains("is full (2 messages"), "{error}");
        let mut handled = receive(&mut done_rx, 3).await;
        handled.sort_unstable();
        assert_eq!(handled, [1, 2, 3], "everything accepted is handled");
        app.publisher().publish("rt.full", &5).await.unwrap();
        assert_eq!(
            receive(&mut done_rx, 1).await,
            [5],
            "room again once drained"
        );
        app.shutdown().await.unwrap();
    }
}

mod settling_panics {
    use super::*;
    use transport::backend::{Acknowledge, Delivery};
    use transport_tests::scripted::{Scripted, Settled};

    pub struct Seen(pub UnboundedSender<u32>);

    #[transport::service]
    impl Seen {
        #[subscriber(topic = "rt.settle")]
        async fn seen(&self, n: u32) {
            let _ = self.0.send(n);
        }
    }

    /// Panics when asked to acknowledge: a broken backend.
    struct PanickingAcker;
    impl Acknowledge for PanickingAcker {
        fn ack(self: Box<Self>) {
            panic!("ack exploded");
        }
        fn nack(self: Box<Self>, _delay: Duration) {
            panic!("nack exploded");
        }
    }

    #[tokio::test]
    async fn a_backend_panicking_while_settling_does_not_stop_the_subscriber() {
        init_tracing();
        let (backend, mut settled) = Scripted::new(true);
        let second = backend.delivery("2", 1);
        let backend = backend.script(
            vec![
                Delivery::new(Message::new(&b"1"[..]), 1, Box::new(PanickingAcker)),
                second,
            ],
            false,
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = App::new(memory_config(""))
            .select_module(module_path!())
            .service(Seen(tx))
            .backend(std::sync::Arc::new(backend))
            .start()
            .await
            .unwrap();
        assert_eq!(
            receive(&mut rx, 2).await,
            [1, 2],
            "the second delivery is still handled"
        );
        assert_eq!(receive(&mut settled, 1).await, [Settled::Ack("2".into())]);
        app.shutdown().await.unwrap();
    }
}

/// With no subscriber recording spans (these tests log nothing), a delivery without a
/// producer's `traceparent` starts its trace lazily: its ids are drawn at its handler's
/// first publish, and an attempt retried in place continues that trace.
mod trace_without_spans {
    use super::*;

    pub struct Relay {
        pub sent: UnboundedSender<(u32, Option<String>)>,
    }

    #[transport::service]
    impl Relay {
        #[subscriber(topic = "rt.trace.orders")]
        async fn relay(&self, order: u32, ctx: &Context) -> Result<(), Error> {
            ctx.publisher()
                .publish("rt.trace.invoices", &ctx.attempt())
                .await?;
            if ctx.attempt() < 2 {
                return Err(Error::msg("try again"));
            }
            let _ = order;
            Ok(())
        }

        #[subscriber(topic = "rt.trace.invoices")]
        async fn invoice(&self, attempt: u32, ctx: &Context) {
            let _ = self
                .sent
                .send((attempt, ctx.header("traceparent").map(str::to_string)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_in_place_continues_the_trace_its_first_attempt_started() {
        let (sent, mut invoices) = mpsc::unbounded_channel();
        let config = memory_config("[subscribers.\"Relay::relay\"]\nordered = true\n");
        let running = start(module_path!(), config, |app| app.service(Relay { sent })).await;
        running
            .publisher()
            .publish("rt.trace.orders", &7u32)
            .await
            .unwrap();
        let mut got = receive(&mut invoices, 2).await;
        got.sort();
        let parse = |(attempt, header): &(u32, Option<String>)| {
            let header = header
                .as_deref()
                .unwrap_or_else(|| panic!("attempt {attempt}'s invoice has no traceparent"));
            transport::trace::TraceContext::parse(header)
                .unwrap_or_else(|| panic!("bad traceparent {header}"))
        };
        let (first, second) = (parse(&got[0]), parse(&got[1]));
        assert_eq!(
            first.trace_id(),
            second.trace_id(),
            "both attempts in one trace"
        );
        assert_ne!(first.span_id(), second.span_id());
        assert_ne!(first.trace_id(), "0".repeat(32));
        running.shutdown().await.unwrap();
    }
}

/// A handler's future is dropped when its run ends (here: cut off by `handler_timeout`),
/// not when the next delivery's takes its place: the dispatcher runs one delivery's future
/// after another in one reused slot.
mod handler_futures {
    use super::*;

    /// Sends its number when dropped.
    struct Held(u32, UnboundedSender<u32>);

    impl Drop for Held {
        fn drop(&mut self) {
            let _ = self.1.send(self.0);
        }
    }

    pub struct Keeper {
        pub dropped: UnboundedSender<u32>,
    }

    #[transport::service]
    impl Keeper {
        #[subscriber(topic = "rt.futures")]
        async fn keep(&self, n: u32) {
            let held = Held(n, self.dropped.clone());
            if n == 1 {
                // never finishes: cut off by the handler timeout
                std::future::pending::<()>().await;
            }
            drop(held);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_out_handler_s_future_is_dropped_at_once_and_the_next_runs() {
        let (dropped, mut drops) = mpsc::unbounded_channel();
        // one attempt: the timed-out message is dead-lettered, nothing runs after it
        let config = memory_config("handler_timeout = \"100ms\"\nmax_attempts = 1\n");
        let running = start(module_path!(), config, |app| {
            app.service(Keeper { dropped })
        })
        .await;
        running
            .publisher()
            .publish("rt.futures", &1u32)
            .await
            .unwrap();
        // its future goes at the timeout, with nothing published that could push it out
        assert_eq!(receive(&mut drops, 1).await, [1]);
        running
            .publisher()
            .publish("rt.futures", &2u32)
            .await
            .unwrap();
        assert_eq!(receive(&mut drops, 1).await, [2]);
        assert_quiet(&mut drops, Duration::from_millis(300)).await;
        running.shutdown().await.unwrap();
    }
}
