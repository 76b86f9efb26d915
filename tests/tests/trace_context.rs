//! W3C trace context across two services: an order published with a `traceparent` is
//! handled by `bill`, which publishes an invoice; `mail` handles the invoice. Both
//! deliveries, and the invoice on the wire, belong to the order's trace (new span ids,
//! the same trace id), each delivery runs in a `transport.deliver` span recording that
//! trace id and its outcome, and for an order published without a `traceparent`, `bill`
//! starts a trace the invoice continues. On the memory broker and on NATS (headers on the wire).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use transport::trace::TraceContext;
use transport::{App, Config, Context, Error};

/// What `bill` saw: its delivery's trace context, by order.
static BILLED: Mutex<Vec<(u32, Option<TraceContext>)>> = Mutex::new(Vec::new());
/// What `mail` saw of one invoice: its `traceparent` header and the delivery's context.
type Mailed = (u32, Option<String>, Option<TraceContext>);
static MAILED: Mutex<Vec<Mailed>> = Mutex::new(Vec::new());

#[transport::subscriber(topic = "trace.orders", group = "billing")]
async fn bill(order: u32, ctx: &Context) -> Result<(), Error> {
    BILLED
        .lock()
        .unwrap()
        .push((order, transport::trace::current()));
    ctx.publisher().publish("trace.invoices", &order).await?;
    Ok(())
}

#[transport::subscriber(topic = "trace.invoices", group = "mail")]
async fn mail(invoice: u32, ctx: &Context) {
    MAILED.lock().unwrap().push((
        invoice,
        ctx.header("traceparent").map(str::to_string),
        transport::trace::current(),
    ));
}

/// The `transport.deliver` spans seen: their fields, by span id.
static SPANS: Mutex<Vec<HashMap<String, String>>> = Mutex::new(Vec::new());

struct Spans;

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: LayerContext<'_, S>,
    ) {
        if attrs.metadata().name() == "transport.deliver" {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(fields);
            }
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: LayerContext<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(fields) = span.extensions_mut().remove::<Fields>()
        {
            SPANS.lock().unwrap().push(fields.0);
        }
    }
}

fn collect_spans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Spans);
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
}

async fn eventually<T>(what: &str, mut find: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = find() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes order `order` (with `traceparent` when given) and checks the trace it
/// leaves; returns the trace id.
async fn one_trace(running: &transport::Running, order: u32, traceparent: Option<&str>) -> String {
    let mut outgoing = running.publisher().to("trace.orders");
    if let Some(traceparent) = traceparent {
        outgoing = outgoing.header("traceparent", traceparent);
    }
    outgoing.send(&order).await.unwrap();
    let billed = eventually("billing", || {
        BILLED
            .lock()
            .unwrap()
            .iter()
            .find(|(o, _)| *o == order)
            .map(|(_, t)| t.clone())
    })
    .await
    .expect("bill runs inside a trace context");
    let (header, mailed) = eventually("mailing", || {
        MAILED
            .lock()
            .unwrap()
            .iter()
            .find(|(o, _, _)| *o == order)
            .map(|(_, h, t)| (h.clone(), t.clone()))
    })
    .await;
    let trace = billed.trace_id();
    if let Some(traceparent) = traceparent {
        let producer = TraceContext::parse(traceparent).unwrap();
        assert_eq!(
            trace,
            producer.trace_id(),
            "bill is in the producer's trace"
        );
        assert_ne!(
            billed.span_id(),
            producer.span_id(),
            "bill has a span of its own"
        );
    }
    let invoice = TraceContext::parse(&header.expect("the invoice carries a traceparent")).unwrap();
    assert_eq!(
        invoice.trace_id(),
        trace,
        "the invoice continues the order's trace"
    );
    assert_ne!(
        invoice.span_id(),
        billed.span_id(),
        "the invoice's publish is a child of bill's delivery"
    );
    let mailed = mailed.expect("mail runs inside a trace context");
    assert_eq!(mailed.trace_id(), trace);
    assert!(![billed.span_id(), invoice.span_id()].contains(&mailed.span_id()));
    // both deliveries' spans, with the trace id and the outcome
    let spans = eventually("both spans closed", || {
        let spans: Vec<_> = SPANS
            .lock()
            .unwrap()
            .iter()
            .filter(|span| span.get("trace_id") == Some(&trace))
            .cloned()
            .collect();
        (spans.len() >= 2).then_some(spans)
    })
    .await;
    for subscriber in ["bill", "mail"] {
        let span = spans
            .iter()
            .find(|span| span.get("subscriber").map(String::as_str) == Some(subscriber))
            .unwrap_or_else(|| panic!("no {subscriber} span in {spans:?}"));
        assert_eq!(
            span.get("outcome").map(String::as_str),
            Some("handled"),
            "{span:?}"
        );
        assert_eq!(
            span.get("attempt").map(String::as_str),
            Some("1"),
            "{span:?}"
        );
    }
    trace
}

async fn two_services(config: Config, orders: (u32, u32)) {
    collect_spans();
    let running = App::new(config)
        .select(|r| r.name == "bill" || r.name == "mail")
        .start()
        .await
        .unwrap();
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let trace = one_trace(&running, orders.0, Some(given)).await;
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    // without a traceparent, bill's delivery starts a trace the invoice continues
    let started = one_trace(&running, orders.1, None).await;
    assert_ne!(started, trace);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_memory_one_trace_crosses_two_services() {
    two_services(Config::for_test(), (1, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_one_trace_crosses_two_services() {
    if std::net::TcpStream::connect("127.0.0.1:4222").is_err() {
        assert!(!transport_tests::in_ci(), "nats unreachable on 4222 in CI");
        eprintln!("SKIPPED: nats unreachable on 4222 (scripts/brokers up)");
        return;
    }
    let config =
        Config::from_toml("[broker]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n").unwrap();
    two_services(config, (101, 102)).await;
}
