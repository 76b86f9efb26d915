//! OpenTelemetry across two services, recorded by an in-memory exporter: an order
//! published inside a request span of the application is handled by `bill`, which
//! publishes an invoice that `mail` handles. All of it is one trace, each span the child
//! of the one before: request -> publish(order) -> deliver(bill) -> publish(invoice) ->
//! deliver(mail), consumer and producer spans by kind. An order from a producer without
//! OpenTelemetry (a bare `traceparent`) makes `bill`'s span that producer's child; one
//! with a malformed `traceparent` starts a trace at `bill`. On the memory broker and on
//! NATS.

use std::sync::OnceLock;

use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use transport::otel::Tracing;
use transport::{App, Config, Context, Error};

#[transport::subscriber(topic = "otel.orders", group = "billing")]
async fn bill(order: u32, ctx: &Context) -> Result<(), Error> {
    ctx.publisher().publish("otel.invoices", &order).await?;
    Ok(())
}

#[transport::subscriber(topic = "otel.invoices", group = "mail")]
async fn mail(invoice: u32) {
    tracing::info!(invoice, "mailed");
}

/// The exporter every span of this test binary ends in.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracing = Tracing::from_provider(provider);
        let subscriber = tracing_subscriber::registry().with(tracing.layer());
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        exporter
    })
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The ended spans of `trace` once `mail`'s delivery is among them.
async fn trace_through_mail(trace: impl Fn(&SpanData) -> bool, what: &str) -> Vec<SpanData> {
    transport_tests::eventually(
        &format!("{what}: a span of mail in this trace"),
        async || {
            let spans: Vec<SpanData> = exporter()
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .filter(|span| trace(span))
                .collect();
            if spans
                .iter()
                .any(|span| attribute(span, "subscriber").as_deref() == Some("mail"))
            {
                Ok(spans)
            } else {
                Err(format!("{} spans", spans.len()))
            }
        },
    )
    .await
}

fn delivery<'a>(spans: &'a [SpanData], subscriber: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|span| {
            span.name == "transport.deliver"
                && attribute(span, "subscriber").as_deref() == Some(subscriber)
        })
        .unwrap_or_else(|| panic!("no delivery span of {subscriber} in {spans:#?}"))
}

fn publish<'a>(spans: &'a [SpanData], topic: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|span| {
            span.name == "transport.publish" && attribute(span, "topic").as_deref() == Some(topic)
        })
        .unwrap_or_else(|| panic!("no publish span to {topic} in {spans:#?}"))
}

fn id(span: &SpanData) -> SpanId {
    span.span_context.span_id()
}

async fn two_services(config: Config, orders: [u32; 3]) {
    // one at a time: a trace started at `bill` is found as the root that was not there before
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE.lock().await;
    exporter();
    let running = App::new(config)
        .select(|r| r.name == "bill" || r.name == "mail")
        .start()
        .await
        .unwrap();

    // 1. published inside a request span the application records
    let request = tracing::info_span!("http.request", order = orders[0]);
    let publisher = running.publisher();
    async { publisher.publish("otel.orders", &orders[0]).await }
        .instrument(request.clone())
        .await
        .unwrap();
    let trace = {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        request.context().span().span_context().trace_id()
    };
    drop(request);
    assert_ne!(trace, TraceId::INVALID);
    let spans = trace_through_mail(|s| s.span_context.trace_id() == trace, "request").await;
    let request = spans
        .iter()
        .find(|span| span.name == "http.request")
        .expect("the request span ended in the trace");
    let order = publish(&spans, "otel.orders");
    let bill = delivery(&spans, "bill");
    let invoice = publish(&spans, "otel.invoices");
    let mail = delivery(&spans, "mail");
    assert_eq!(
        order.parent_span_id,
        id(request),
        "the order's publish is in the request"
    );
    assert_eq!(
        bill.parent_span_id,
        id(order),
        "bill's delivery follows the order's publish"
    );
    assert_eq!(
        invoice.parent_span_id,
        id(bill),
        "the invoice is published inside bill"
    );
    assert_eq!(
        mail.parent_span_id,
        id(invoice),
        "mail's delivery follows the invoice's publish"
    );
    assert!(bill.parent_span_is_remote && mail.parent_span_is_remote);
    assert_eq!(
        (order.span_kind.clone(), bill.span_kind.clone()),
        (SpanKind::Producer, SpanKind::Consumer)
    );
    assert_eq!(attribute(bill, "outcome").as_deref(), Some("handled"));
    assert_eq!(attribute(mail, "attempt").as_deref(), Some("1"));
    assert_eq!(attribute(mail, "trace_id"), Some(format!("{trace:032x}")));

    // 2. from a producer without OpenTelemetry: a bare traceparent
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    running
        .publisher()
        .to("otel.orders")
        .header("traceparent", given)
        .send(&orders[1])
        .await
        .unwrap();
    let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let spans = trace_through_mail(|s| s.span_context.trace_id() == trace, "traceparent").await;
    assert_eq!(
        delivery(&spans, "bill").parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        "bill's delivery is the producer's child"
    );
    assert_eq!(
        delivery(&spans, "mail").parent_span_id,
        id(publish(&spans, "otel.invoices"))
    );

    // 3. a malformed traceparent: bill's delivery starts a trace the invoice continues
    let bill_roots = || {
        exporter()
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|span| {
                span.name == "transport.deliver"
                    && span.parent_span_id == SpanId::INVALID
                    && attribute(span, "subscriber").as_deref() == Some("bill")
            })
    };
    let before: Vec<SpanId> = bill_roots().map(|span| id(&span)).collect();
    running
        .publisher()
        .to("otel.orders")
        .header("traceparent", "00-not-a-trace-01")
        .send(&orders[2])
        .await
        .unwrap();
    let bill_root = transport_tests::eventually("a trace started at bill", async || {
        bill_roots()
            .find(|span| !before.contains(&id(span)))
            .ok_or_else(|| "no new root".to_string())
    })
    .await;
    let trace = bill_root.span_context.trace_id();
    let spans = trace_through_mail(|s| s.span_context.trace_id() == trace, "root").await;
    assert_eq!(
        publish(&spans, "otel.invoices").parent_span_id,
        id(&bill_root)
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_memory_one_trace_crosses_two_services() {
    two_services(Config::for_test(), [1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_one_trace_crosses_two_services() {
    if !transport_tests::require_broker(4222, "nats") {
        return;
    }
    let config =
        Config::from_toml("[broker]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n").unwrap();
    two_services(config, [101, 102, 103]).await;
}
