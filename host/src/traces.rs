//! OpenTelemetry traces over OTLP/HTTP: settings validated at load, the `tracing` layer that
//! exports the host's spans (one per reconcile, with a child per step), and the trace id of a
//! span for logs and Events.
//!
//! Only the host's own spans (target `wasmop`, level info and above) are exported: the
//! libraries' spans (kube, hyper) would multiply the volume without saying anything about a
//! reconcile. Spans go out in batches from a background thread, so a slow or absent collector
//! costs a reconcile nothing; the batch queue drops what does not fit.

use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The service name unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "wasmop";
/// The path of the traces signal under an OTLP/HTTP base address.
const TRACES_PATH: &str = "/v1/traces";
/// Environment variables that turn traces on without `--otlp-endpoint` (as the OpenTelemetry
/// SDKs read them).
const ENDPOINT_VARIABLES: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// Why traces cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The sample ratio is outside 0..=1.
    #[error("--trace-sample-ratio {0}: give a fraction between 0 and 1 (0.1 keeps one trace in ten)")]
    SampleRatio(f64),
    /// The endpoint is not an http(s) URL.
    #[error("--otlp-endpoint {0:?}: give the OTLP/HTTP address of a collector, such as http://jaeger-collector:4318")]
    Endpoint(String),
    /// The exporter could not be built (for instance a bad `OTEL_EXPORTER_OTLP_*` variable).
    #[error("cannot build the OTLP trace exporter: {0}; check the OTEL_EXPORTER_OTLP_* variables")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Where and how much to trace, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// The traces URL (…/v1/traces), or `None` to take it from the `OTEL_EXPORTER_OTLP_*`
    /// variables.
    endpoint: Option<String>,
    sample_ratio: f64,
    service_name: String,
}

impl TraceSettings {
    /// Settings from the flags and the environment: `None` when neither `endpoint` nor an
    /// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` variable asks for traces. `endpoint` is an
    /// OTLP/HTTP base address (`/v1/traces` is appended unless it is there); `sample_ratio` is
    /// the share of new traces kept (a reconcile is always a new trace).
    pub fn from_flags(endpoint: Option<&str>, sample_ratio: f64) -> Result<Option<TraceSettings>, TraceError> {
        let from_env = ENDPOINT_VARIABLES.iter().any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
        if endpoint.is_none() && !from_env {
            return Ok(None);
        }
        let service_name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty());
        TraceSettings::new(endpoint, sample_ratio, service_name.as_deref().unwrap_or(SERVICE_NAME)).map(Some)
    }

    /// Settings as given (no environment read); see [`TraceSettings::from_flags`].
    pub fn new(endpoint: Option<&str>, sample_ratio: f64, service_name: &str) -> Result<TraceSettings, TraceError> {
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(TraceError::SampleRatio(sample_ratio));
        }
        let endpoint = endpoint.map(traces_url).transpose()?;
        Ok(TraceSettings { endpoint, sample_ratio, service_name: service_name.to_string() })
    }

    /// The traces URL, when given rather than taken from the environment.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The share of traces kept.
    pub fn sample_ratio(&self) -> f64 {
        self.sample_ratio
    }
}

/// `base` as a traces URL: an http(s) address, with `/v1/traces` appended unless present.
fn traces_url(base: &str) -> Result<String, TraceError> {
    let uri: http::Uri = base.parse().map_err(|_| TraceError::Endpoint(base.to_string()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(TraceError::Endpoint(base.to_string()));
    }
    let trimmed = base.trim_end_matches('/');
    Ok(match trimmed.ends_with(TRACES_PATH) {
        true => trimmed.to_string(),
        false => format!("{trimmed}{TRACES_PATH}"),
    })
}

/// The running trace pipeline: hands out the layer that exports spans, and flushes on
/// [`Traces::shutdown`].
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts the exporter and the batch processor (a background thread) for `settings`.
    pub fn start(settings: &TraceSettings) -> Result<Traces, TraceError> {
        // reqwest is built without a default TLS provider (for https endpoints); kube uses
        // ring, so does this.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(endpoint) = &settings.endpoint {
            exporter = exporter.with_endpoint(endpoint);
        }
        let resource = Resource::builder().with_service_name(settings.service_name.clone()).build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter.build()?)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio))))
            .with_resource(resource)
            .build();
        Ok(Traces { provider })
    }

    /// The layer exporting the host's spans ([`exported_spans`]) to this pipeline.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        self.unfiltered_layer().with_filter(exported_spans())
    }

    /// The layer exporting every span it sees; filter it with [`exported_spans`]. For a
    /// subscriber that swaps the layer at run time (`tracing_subscriber::reload`), which cannot
    /// hold a per-layer filter itself: the filter goes around the reloadable layer.
    pub fn unfiltered_layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer(SERVICE_NAME))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_level(false)
            .with_target(false)
    }

    /// Exports what is queued and stops the pipeline; errors are logged.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces: the last spans may not have been exported");
        }
    }
}

/// The spans exported: the host's own (target `wasmop`, info and above).
pub fn exported_spans() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target("wasmop", tracing::Level::INFO)
}

/// A span for one step of a reconcile, made by `make` only when the current span belongs to a
/// kept trace, else a disabled span: with traces off, or for the reconciles sampling leaves
/// out, the steps cost no span (the decision is taken once, at the reconcile's root span).
pub fn step_span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    match kept(&tracing::Span::current()).is_some() {
        true => make(),
        false => tracing::Span::none(),
    }
}

/// The trace id of `span` (32 hex digits) when it is recorded and sampled: what logs and Events
/// name so a reader can find the trace. `None` when traces are off or this one is not kept.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    kept(span).map(|id| id.to_string())
}

/// The trace id of `span` when its trace is kept (no allocation: asked per step span).
fn kept(span: &tracing::Span) -> Option<opentelemetry::trace::TraceId> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    (span_context.is_valid() && span_context.is_sampled()).then(|| span_context.trace_id())
}

/// Makes `span` continue the trace of an incoming request that carries a W3C `traceparent`
/// header (the API server sends one to webhooks when its own tracing is on), so the webhook's
/// work shows inside the API server's trace. Without the header, or with traces off, nothing
/// changes.
pub fn continue_remote(span: &tracing::Span, headers: &http::HeaderMap) {
    use opentelemetry::propagation::TextMapPropagator;
    if !headers.contains_key("traceparent") {
        return;
    }
    let context = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(headers));
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Request headers as an OpenTelemetry extractor.
struct Headers<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{TraceError, TraceSettings};

    #[test]
    fn the_endpoint_gets_the_traces_path_once() {
        let settings = |url| TraceSettings::new(Some(url), 1.0, "wasmop").map(|s| s.endpoint.unwrap_or_default());
        assert_eq!(settings("http://jaeger:4318").unwrap(), "http://jaeger:4318/v1/traces");
        assert_eq!(settings("http://jaeger:4318/").unwrap(), "http://jaeger:4318/v1/traces");
        assert_eq!(settings("https://otel.example/v1/traces").unwrap(), "https://otel.example/v1/traces");
        assert!(matches!(settings("jaeger:4318"), Err(TraceError::Endpoint(_))));
        assert!(matches!(settings("grpc://jaeger:4317"), Err(TraceError::Endpoint(_))));
    }

    #[test]
    fn a_ratio_outside_zero_to_one_is_refused() {
        assert!(matches!(TraceSettings::new(None, 1.5, "wasmop"), Err(TraceError::SampleRatio(_))));
        assert!(matches!(TraceSettings::new(None, -0.1, "wasmop"), Err(TraceError::SampleRatio(_))));
        assert_eq!(TraceSettings::new(None, 0.1, "wasmop").unwrap().sample_ratio(), 0.1);
    }

    #[test]
    fn a_traceparent_header_makes_the_span_join_that_trace() {
        use tracing_subscriber::prelude::*;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let traces = super::Traces { provider };
        let subscriber = tracing_subscriber::registry().with(traces.layer());
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = http::HeaderMap::new();
            let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            headers.insert("traceparent", http::HeaderValue::from_static(parent));
            let span = tracing::info_span!("conversion review");
            super::continue_remote(&span, &headers);
            assert_eq!(super::trace_id(&span).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
            let alone = tracing::info_span!("conversion review");
            super::continue_remote(&alone, &http::HeaderMap::new());
            let own = super::trace_id(&alone).unwrap_or_default();
            assert!(own.len() == 32 && own != "4bf92f3577b34da6a3ce929d0e0e4736", "{own}");
        });
    }

    #[test]
    fn no_endpoint_and_no_environment_means_no_traces() {
        // The test environment sets no OTEL_EXPORTER_OTLP_* variable.
        if super::ENDPOINT_VARIABLES.iter().all(|v| std::env::var(v).is_err()) {
            assert_eq!(TraceSettings::from_flags(None, 1.0).unwrap(), None);
        }
    }
}
