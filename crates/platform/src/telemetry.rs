//! One tracing initializer and one shutdown signal for every binary.

use std::io::IsTerminal;

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
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(format == Format::Text && std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        Format::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        Format::Text => builder.try_init(),
    };
    drop(result);
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
