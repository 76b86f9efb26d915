//! OpenTelemetry recording only INFO while another layer takes DEBUG: the
//! `transport.publish` span exists (for the other layer) but is not exported, so the
//! invoice `bill` publishes names bill's delivery span as its parent, a span the exporter
//! has, never an id no exporter knows.

use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use transport::otel::Tracing;
use transport::{App, Config, Context, Error};

#[transport::subscriber(topic = "otelf.orders", group = "billing")]
async fn bill(order: u32, ctx: &Context) -> Result<(), Error> {
    ctx.publisher().publish("otelf.invoices", &order).await?;
    Ok(())
}

#[transport::subscriber(topic = "otelf.invoices", group = "mail")]
async fn mail(_invoice: u32) {}

fn subscriber_of(span: &SpanData) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == "subscriber")
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_span_left_out_of_the_export_leaves_the_delivery_as_parent() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracing = Tracing::from_provider(provider);
    // DEBUG spans exist (a log layer wants them); OpenTelemetry records INFO and above
    let subscriber = tracing_subscriber::registry()
        .with(tracing.layer().with_filter(LevelFilter::INFO))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(LevelFilter::DEBUG),
        );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let running = App::new(Config::for_test())
        .select(|r| r.name == "bill" || r.name == "mail")
        .start()
        .await
        .unwrap();
    running
        .publisher()
        .to("otelf.orders")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send(&1u32)
        .await
        .unwrap();
    let trace = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let spans = transport_tests::eventually("mail's span", async || {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace)
            .collect();
        if spans
            .iter()
            .any(|s| subscriber_of(s).as_deref() == Some("mail"))
        {
            Ok(spans)
        } else {
            Err(format!("{spans:#?}"))
        }
    })
    .await;
    running.shutdown().await.unwrap();
    assert!(
        spans.iter().all(|span| span.name != "transport.publish"),
        "publish spans are not exported at INFO: {spans:#?}"
    );
    let find = |name: &str| {
        spans
            .iter()
            .find(|span| subscriber_of(span).as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
    };
    assert_eq!(
        find("mail").parent_span_id,
        find("bill").span_context.span_id(),
        "the invoice names bill's delivery span, which the exporter has"
    );
}
