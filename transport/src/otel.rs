//! OpenTelemetry (feature `opentelemetry`): the `transport.deliver` and `transport.publish`
//! spans become OpenTelemetry spans of one trace across services.
//!
//! With a `tracing-opentelemetry` layer installed (any: the one [`Otlp`] builds, or one over
//! a tracer provider of your own), each delivery's span is made a child of the producer's
//! span named by the message's `traceparent` (or the root of a new trace when it has
//! none), the handler's publishes carry the `traceparent` of their `transport.publish`
//! span (of the delivery's span when that span is not recorded), and a publish made
//! outside any handler continues the trace of the span it runs in (an HTTP request's,
//! say), or starts one at its own `transport.publish` span when that span is recorded
//! (`transport=debug`; at `info` such a publish carries no context and the first
//! consumer starts the trace). A delivery span the filter leaves out (`warn`, say) is not
//! there to be a parent: its handler's spans start traces of their own. OpenTelemetry
//! keeps a `tracestate` only if it is valid (at most 32 entries); one it refuses is
//! dropped. Without such a layer nothing changes: the W3C context of [`crate::trace`] is
//! carried as before.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // OTLP over HTTP (protobuf) to a collector; `OTEL_EXPORTER_OTLP_ENDPOINT` is read when
//! // no endpoint is given, http://localhost:4318 otherwise
//! let otel = transport::otel::Otlp::new("billing").install()?;
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::EnvFilter::new("info,transport=debug"))
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(otel.layer())
//!     .init();
//! // ... App::new(config).run().await ...
//! otel.shutdown().await?; // sends what is still buffered
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

use crate::trace::TraceContext;

pub use opentelemetry;
pub use opentelemetry_sdk;
pub use tracing_opentelemetry;

/// Why the OpenTelemetry export could not be set up or shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// [`Otlp::install`] was called outside a tokio runtime (the exporter sends on it).
    #[error("the OTLP exporter must be installed inside a tokio runtime (it sends on it)")]
    NoRuntime,
    /// The exporter's configuration was refused (an endpoint that is not a URL, say).
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// An `https://` endpoint: this exporter speaks plain HTTP (see [`Otlp`]).
    #[error(
        "the OTLP endpoint `{0}` is https: this exporter speaks plain HTTP (for TLS build your own provider and use `Tracing::from_provider`)"
    )]
    Https(String),
    /// Sending what was buffered failed or took too long.
    #[error("the OpenTelemetry spans could not be flushed: {0}")]
    Flush(opentelemetry_sdk::error::OTelSdkError),
    /// Shutting down (and sending what was buffered) failed or took too long.
    #[error("the OpenTelemetry tracer provider did not shut down cleanly: {0}")]
    Shutdown(opentelemetry_sdk::error::OTelSdkError),
}

/// How long one export may take unless set ([`Otlp::timeout`]): the batch processor's
/// own limit on an export.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// An OTLP/HTTP (protobuf) span exporter to an OpenTelemetry collector, batched, sending on
/// the tokio runtime it is installed from. Plain HTTP: a collector beside the service is the
/// usual set-up; for TLS or gRPC build your own provider and give
/// `tracing_opentelemetry::layer().with_tracer(..)` to your subscriber; the delivery and
/// publish spans work with any.
#[derive(Debug, Clone)]
pub struct Otlp {
    service_name: String,
    endpoint: Option<String>,
    timeout: Duration,
}

impl Otlp {
    /// An exporter for the service `service_name` (the `service.name` resource of its spans).
    pub fn new(service_name: impl Into<String>) -> Self {
        Otlp {
            service_name: service_name.into(),
            endpoint: None,
            timeout: DEFAULT_EXPORT_TIMEOUT,
        }
    }

    /// The collector's traces URL, used as given (`http://collector:4318/v1/traces`).
    /// Without it, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as given), then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (with `/v1/traces` appended), then
    /// `http://localhost:4318/v1/traces`.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// How long one export may take before it is given up (default 5 s, the batch
    /// processor's own limit on an export).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the exporter and a tracer provider batching into it; add
    /// [`Tracing::layer`] to your `tracing` subscriber. Call inside a tokio runtime.
    pub fn install(self) -> Result<Tracing, OtelError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtelError::NoRuntime)?;
        if let Some(endpoint) = self.endpoint.as_ref().filter(|url| {
            url.get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        }) {
            return Err(OtelError::Https(endpoint.clone()));
        }
        let client = OnRuntime {
            runtime,
            client: opentelemetry_http::hyper::HyperClient::with_default_connector(
                self.timeout,
                None,
            ),
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(self.timeout)
            .with_http_client(client);
        if let Some(endpoint) = self.endpoint {
            exporter = exporter.with_endpoint(endpoint);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter.build()?)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(self.service_name)
                    .build(),
            )
            .build();
        Ok(Tracing {
            provider,
            timeout: self.timeout,
        })
    }
}

/// A tracer provider exporting spans; its [`layer`](Tracing::layer) turns `tracing` spans
/// into OpenTelemetry spans.
#[derive(Debug, Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
    /// How long one export may take: shutting down waits a little longer.
    timeout: Duration,
}

impl Tracing {
    /// Wraps a tracer provider of your own (another exporter, sampler or processor).
    pub fn from_provider(provider: SdkTracerProvider) -> Self {
        Tracing {
            provider,
            timeout: DEFAULT_EXPORT_TIMEOUT,
        }
    }

    /// The `tracing` layer recording spans into this provider.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("transport"))
    }

    /// The provider, for a tracer of your own.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Sends every span still buffered (ended ones: spans still open are not); the SDK
    /// gives a flush 5 s.
    pub async fn flush(&self) -> Result<(), OtelError> {
        let provider = self.provider.clone();
        blocking(move || provider.force_flush())
            .await
            .map_err(OtelError::Flush)
    }

    /// Sends what is buffered and stops the exporter, waiting up to the export timeout
    /// and a second. Call it before the process exits: a provider merely dropped sends
    /// what is left only if the runtime still runs, and drops it otherwise. Off the
    /// runtime's threads: the exporter sends on the runtime while this waits for it.
    pub async fn shutdown(self) -> Result<(), OtelError> {
        let limit = self.timeout + Duration::from_secs(1);
        blocking(move || self.provider.shutdown_with_timeout(limit))
            .await
            .map_err(OtelError::Shutdown)
    }
}

async fn blocking(
    call: impl FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) -> opentelemetry_sdk::error::OTelSdkResult {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        Err(join) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
            join.to_string(),
        )),
    }
}

/// An HTTP client whose requests run on a tokio runtime, whoever awaits them: the batch
/// span processor exports from a thread of its own, with no reactor.
#[derive(Clone)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: opentelemetry_http::hyper::HyperClient,
}

impl fmt::Debug for OnRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnRuntime")
    }
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

impl TraceContext {
    fn to_otel(&self) -> SpanContext {
        let (trace_id, span_id, flags) = self.ids();
        let state = self
            .state()
            .and_then(|state| state.parse::<TraceState>().ok())
            .unwrap_or_default();
        SpanContext::new(
            TraceId::from(trace_id),
            opentelemetry::trace::SpanId::from(span_id),
            TraceFlags::new(flags),
            true,
            state,
        )
    }

    fn from_otel(context: &SpanContext) -> Option<Self> {
        if !context.is_valid() {
            return None;
        }
        let state = context.trace_state().header();
        Some(TraceContext::recorded(
            u128::from_be_bytes(context.trace_id().to_bytes()),
            u64::from_be_bytes(context.span_id().to_bytes()),
            context.trace_flags().to_u8(),
            (!state.is_empty()).then_some(state),
        ))
    }
}

/// Makes `span` (a delivery's) the child of `parent` (the producer's span) in
/// OpenTelemetry, or the root of a new trace without one; returns the span's own context
/// when a layer records it (the handler's publishes are its children), `None` otherwise.
pub(crate) fn deliver(span: &tracing::Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
    let parent = match parent {
        Some(parent) => opentelemetry::Context::new().with_remote_span_context(parent.to_otel()),
        None => opentelemetry::Context::new(),
    };
    span.set_parent(parent).ok()?;
    TraceContext::from_otel(span.context().span().span_context())
}

/// The context a publish made now carries: the current span's (a `transport.publish`
/// span, a delivery's, or one of the application's) if a layer records it.
pub(crate) fn publish() -> Option<TraceContext> {
    if !tracing::dispatcher::has_been_set() {
        // no subscriber anywhere yet: no span records anything
        return None;
    }
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    TraceContext::from_otel(span.context().span().span_context())
}
