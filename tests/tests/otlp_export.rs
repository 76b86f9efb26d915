//! The OTLP exporter (`transport::otel::Otlp`) against a collector stand-in: spans of a
//! message crossing two services (`bill` publishes an invoice, `mail` handles it) arrive
//! as OTLP/HTTP protobuf, with the service's name, in one trace, each the child of the one
//! before; with the collector down, every message is still handled and the exporter
//! shuts down at once. And the exporter's set-up errors: outside a runtime, an endpoint
//! that is not a URL, an https one.

use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use transport::otel::{OtelError, Otlp};
use transport::{App, Config, Context, Error};

#[transport::subscriber(topic = "otlp.orders", group = "billing")]
async fn bill(order: u32, ctx: &Context) -> Result<(), Error> {
    ctx.publisher().publish("otlp.invoices", &order).await?;
    Ok(())
}

#[transport::subscriber(topic = "otlp.invoices", group = "mail")]
async fn mail(invoice: u32) {
    if invoice >= 1000 {
        MAILED_WHILE_DOWN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Invoices (numbered from 1000) mailed while the collector was down.
static MAILED_WHILE_DOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Every export request the stand-in received: (path, content type, body).
static RECEIVED: Mutex<Vec<(String, String, Vec<u8>)>> = Mutex::new(Vec::new());

/// A collector stand-in: answers each HTTP/1.1 POST with 200 and keeps what it got.
async fn collector() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    // the head
                    let head_end = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|line| {
                                let (key, value) = line.split_once(':')?;
                                key.eq_ignore_ascii_case(name)
                                    .then(|| value.trim().to_string())
                            })
                            .unwrap_or_default()
                    };
                    let length: usize = header("content-length").parse().unwrap_or(0);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let content_type = header("content-type");
                    while buffer.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buffer[head_end..head_end + length].to_vec();
                    buffer.drain(..head_end + length);
                    RECEIVED.lock().unwrap().push((path, content_type, body));
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// The spans received so far, with the `service.name` of their resource.
fn received_spans() -> Vec<(String, Span)> {
    let mut spans = Vec::new();
    for (path, content_type, body) in RECEIVED.lock().unwrap().iter() {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
    }
    spans
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(text) => Some(text.clone()),
            Value::IntValue(n) => Some(n.to_string()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_two_services_reach_the_collector_in_one_trace() {
    let address = collector().await;
    let otel = Otlp::new("billing")
        .endpoint(format!("http://{address}/v1/traces"))
        .install()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(otel.layer());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let running = App::new(Config::for_test())
        .select(|r| r.name == "bill" || r.name == "mail")
        .start()
        .await
        .unwrap();
    let publisher = running.publisher();
    async { publisher.publish("otlp.orders", &7u32).await }
        .instrument(tracing::info_span!("http.request"))
        .await
        .unwrap();

    // spans are sent once ended: flush until mail's delivery has arrived
    let spans = transport_tests::eventually("mail's span at the collector", async || {
        otel.flush().await.unwrap();
        let spans = received_spans();
        if spans
            .iter()
            .any(|(_, span)| attribute(span, "subscriber").as_deref() == Some("mail"))
        {
            Ok(spans)
        } else {
            Err(format!("{spans:#?}"))
        }
    })
    .await;
    running.shutdown().await.unwrap();

    assert!(
        spans.iter().all(|(service, _)| service == "billing"),
        "{spans:#?}"
    );
    let find = |name: &str, key: &str, value: &str| -> &Span {
        spans
            .iter()
            .map(|(_, span)| span)
            .find(|span| span.name == name && attribute(span, key).as_deref() == Some(value))
            .unwrap_or_else(|| panic!("no {name} with {key}={value} in {spans:#?}"))
    };
    let request = spans
        .iter()
        .map(|(_, span)| span)
        .find(|span| span.name == "http.request")
        .expect("the request span");
    let order = find("transport.publish", "topic", "otlp.orders");
    let bill = find("transport.deliver", "subscriber", "bill");
    let invoice = find("transport.publish", "topic", "otlp.invoices");
    let mail = find("transport.deliver", "subscriber", "mail");
    for span in [order, bill, invoice, mail] {
        assert_eq!(span.trace_id, request.trace_id, "one trace: {span:#?}");
    }
    assert!(request.parent_span_id.is_empty());
    assert_eq!(order.parent_span_id, request.span_id);
    assert_eq!(bill.parent_span_id, order.span_id);
    assert_eq!(invoice.parent_span_id, bill.span_id);
    assert_eq!(mail.parent_span_id, invoice.span_id);
    assert_eq!(order.kind, SpanKind::Producer as i32);
    assert_eq!(mail.kind, SpanKind::Consumer as i32);
    assert_eq!(attribute(mail, "outcome").as_deref(), Some("handled"));

    otel.shutdown().await.unwrap();
}

/// A collector that is not there costs the service nothing: every message is handled,
/// and shutting the exporter down ends within its timeout (the spans are what is lost).
#[tokio::test]
async fn a_collector_that_is_down_costs_the_service_nothing() {
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let otel = Otlp::new("billing")
        .endpoint(format!("http://{down}/v1/traces"))
        .install()
        .unwrap();
    // this test's thread only (one thread runs the whole App here): the other test owns
    // the global subscriber
    let _recording =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(otel.layer()));
    let running = App::new(Config::for_test())
        .select(|r| r.name == "bill" || r.name == "mail")
        .start()
        .await
        .unwrap();
    for order in 1000..1020u32 {
        running
            .publisher()
            .publish("otlp.orders", &order)
            .await
            .unwrap();
    }
    transport_tests::eventually("20 invoices mailed", async || {
        match MAILED_WHILE_DOWN.load(std::sync::atomic::Ordering::SeqCst) {
            20 => Ok(()),
            n => Err(format!("{n} so far")),
        }
    })
    .await;
    running.shutdown().await.unwrap();
    let began = std::time::Instant::now();
    // the export fails (refused); whether shutdown reports it, it must end
    let _ = otel.flush().await;
    let _ = otel.shutdown().await;
    assert!(
        began.elapsed() < std::time::Duration::from_secs(4),
        "flush and shutdown took {:?}",
        began.elapsed()
    );
}

#[test]
fn the_exporter_needs_a_runtime_and_a_plain_http_url() {
    assert!(matches!(
        Otlp::new("billing").install(),
        Err(OtelError::NoRuntime)
    ));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = runtime
        .block_on(async { Otlp::new("billing").endpoint("not a url").install() })
        .unwrap_err();
    assert!(matches!(error, OtelError::Exporter(_)), "{error}");
    assert!(error.to_string().contains("not a url"), "{error}");
    // plain HTTP only: an https endpoint is refused, not left to fail every export
    let error = runtime
        .block_on(async {
            Otlp::new("billing")
                .endpoint("HTTPS://collector:4318/v1/traces")
                .install()
        })
        .unwrap_err();
    assert!(matches!(error, OtelError::Https(_)), "{error}");
}
