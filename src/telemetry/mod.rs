//! Observation: the per-connection and per-request context, Prometheus metrics, the access log
//! and log set-up. A leaf: it knows no handler, listener or store.

pub mod access_log;
pub mod ctx;
pub mod labels;
pub mod metrics;

use crate::config::{LogConfig, LogFormat, TracesConfig};

/// Keeps span export running; dropped, it exports what is buffered and stops.
#[derive(Debug, Default)]
pub struct TelemetryGuard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("modgate: exporting the last spans failed: {e}");
        }
    }
}

/// Installs the global tracing subscriber: log lines on stderr, and with
/// `traces.otlp_endpoint` the connection and request spans exported over OTLP/HTTP. Safe to
/// call more than once; later calls are ignored. `RUST_LOG`, when set, overrides `log.level`
/// (for the log lines). Call it outside an async runtime (the exporter's client blocks).
pub fn init(log: &LogConfig, traces: &TracesConfig) -> anyhow::Result<TelemetryGuard> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = if log.access_log {
        filter
    } else {
        filter.add_directive("modgate::access=off".parse().expect("static directive"))
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match log.format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let (otel, provider) = if traces.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&traces.otlp_endpoint)
            .build()
            .map_err(|e| anyhow::anyhow!("traces.otlp_endpoint: {e}"))?;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(traces.sample_ratio),
            )))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(traces.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("modgate");
        // modgate's own spans (client, conn, request) and the events inside them.
        let only_modgate =
            tracing_subscriber::filter::Targets::new().with_target("modgate", tracing::Level::INFO);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(only_modgate);
        (Some(layer), Some(provider))
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Ok(TelemetryGuard(provider))
}
