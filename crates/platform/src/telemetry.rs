//! One tracing initializer and one shutdown signal for every binary.

use std::io::IsTerminal;

use common::config::Config;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::outbound::{Outbound, OutboundError};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line: the event's fields flattened beside
    /// `message`, and the current span's under `span` (a run's lines carry
    /// `span.run_id` and `span.tenant`, a request's `span.request_id`).
    Json,
    Text,
}

impl Format {
    /// `PADDOCK_LOG_FORMAT` (`json` or `text`); without it JSON when stderr
    /// is not a terminal (a service manager, a container, a file), text on
    /// one.
    pub fn from_env() -> Self {
        match std::env::var("PADDOCK_LOG_FORMAT").as_deref() {
            Ok("json") => Format::Json,
            Ok("text") => Format::Text,
            _ if std::io::stderr().is_terminal() => Format::Text,
            _ => Format::Json,
        }
    }
}

/// Logs to stderr as [`Format::from_env`] says; `RUST_LOG` filters
/// (default `info`).
pub fn init() {
    init_with(Format::from_env(), "info");
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` or else by
/// `default_filter`. The first call in a process wins (tests, benches).
pub fn init_with(format: Format, default_filter: &str) {
    install(format, default_filter, None);
}

/// What [`init_for`] set up: the span exporter, when there is one.
#[must_use = "shut it down at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops exporting.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(%error, "the last spans could not be exported");
            }
        }
    }
}

/// Logs as [`init`] does and, with `telemetry.otlp_endpoint` set, exports
/// every span over OTLP/HTTP as `service` (`paddock-api`, ...). Call it
/// inside the Tokio runtime: the exporter's calls run on it.
pub fn init_for(service: &'static str, config: &Config) -> Result<Telemetry, OutboundError> {
    let provider = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(service, endpoint, config)?),
        None => None,
    };
    install(Format::from_env(), "info", provider.as_ref().map(|p| p.tracer(service)));
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        tracing::info!(%endpoint, service, "exporting spans over OTLP");
    }
    Ok(Telemetry { provider })
}

fn install(format: Format, default_filter: &str, tracer: Option<opentelemetry_sdk::trace::Tracer>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(format == Format::Text && std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> = match format {
        Format::Json => Box::new(lines.json().flatten_event(true).with_current_span(true).with_span_list(false)),
        Format::Text => Box::new(lines),
    };
    // The exporter's own HTTP stack is never traced: with `RUST_LOG=debug`
    // each export would make spans for the next one.
    let own = |meta: &tracing::Metadata<'_>| {
        !["h2", "hyper", "hyper_util", "reqwest", "rustls", "opentelemetry"]
            .iter()
            .any(|t| meta.target().starts_with(t))
    };
    let spans = tracer.map(|tracer| {
        tracing_opentelemetry::layer().with_tracer(tracer).with_filter(tracing_subscriber::filter::filter_fn(own))
    });
    drop(tracing_subscriber::registry().with(lines).with(spans).with(filter).try_init());
}

fn tracer_provider(service: &'static str, endpoint: &str, config: &Config) -> Result<SdkTracerProvider, OutboundError> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let invalid = |message: String| OutboundError::Config { key: "telemetry.otlp_endpoint", message };
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| invalid("spans can only be exported from inside the Tokio runtime".to_owned()))?;
    let outbound = Outbound::new(&config.tls, &config.outbound)?;
    // A collector that takes the connection and never answers must not
    // hold the export thread: every call ends within its timeout.
    let client = outbound
        .http()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| invalid(format!("cannot build its HTTP client: {e}")))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime { client, runtime })
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The exporter's HTTP client: Paddock's own (its TLS trust and proxy),
/// each call run on the process's Tokio runtime, since the batch exporter
/// calls from a thread of its own.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let call = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let answer = client.execute(request).await?;
            let (status, headers) = (answer.status(), answer.headers().clone());
            let body = answer.bytes().await?;
            let mut response = http::Response::new(body);
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Ok::<_, opentelemetry_http::HttpError>(response)
        });
        call.await.map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?
    }
}

/// The W3C `traceparent` of `span`, when spans are exported: what a run
/// carries from the API request that made it to the worker that runs it.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// Makes `span` a child of the span `traceparent` names (another
/// process's); an invalid value is ignored.
pub fn follow(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let carrier = std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
