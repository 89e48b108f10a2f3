//! The agent's logger: key-value records on stderr, which in the guest is the serial console
//! (`/dev/ttyS0`) that the shim copies into its own log.

use slog::{o, Drain, Level, Logger};

/// Builds the root logger; every component gets a child of it (`log.new(o!(...))`).
///
/// Write errors are ignored rather than fused into a panic: a PID 1 that panics because the
/// console went away would take the whole VM down.
pub fn new(level: Level) -> Logger {
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator)
        .use_utc_timestamp()
        .build()
        .filter_level(level)
        .ignore_res();
    Logger::root(drain, o!("agent" => "bazaar"))
}
