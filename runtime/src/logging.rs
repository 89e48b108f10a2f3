//! Structured logging: one slog logger per shim, passed down, never re-created per call.

use std::io::Write;

use anyhow::{bail, Result};
use slog::{Drain, Level, Logger};

/// Parses a configured level name.
pub fn parse_level(name: &str) -> Result<Level> {
    Ok(match name {
        "trace" => Level::Trace,
        "debug" => Level::Debug,
        "info" => Level::Info,
        "warn" | "warning" => Level::Warning,
        "error" => Level::Error,
        "critical" => Level::Critical,
        other => bail!(
            "unknown log level {other:?} (expected trace, debug, info, warning, error or critical)"
        ),
    })
}

/// A logger writing key-value records as text lines to `sink` (containerd's shim log FIFO).
pub fn logger<W: Write + Send + 'static>(sink: W, level: Level) -> Logger {
    let decorator = slog_term::PlainDecorator::new(sink);
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    // Async so that a slow log reader never blocks a vCPU-exit or RPC path.
    let drain = slog_async::Async::new(drain).chan_size(4096).build().fuse();
    Logger::root(drain.filter_level(level).fuse(), slog::o!())
}

/// A logger that drops everything (for code paths that run before logging is set up).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}
