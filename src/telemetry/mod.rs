//! Observation: the per-connection and per-request context, Prometheus metrics, the access log
//! and log set-up. A leaf: it knows no handler, listener or store.

pub mod access_log;
pub mod ctx;
pub mod labels;
pub mod metrics;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber (stderr). Safe to call more than once; later calls are
/// ignored. `RUST_LOG`, when set, overrides `log.level`.
pub fn init_logging(cfg: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = if cfg.access_log {
        filter
    } else {
        filter.add_directive("modgate::access=off".parse().expect("static directive"))
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
