//! The shim's logger: key-value records into containerd's `log` FIFO in the bundle directory,
//! which containerd copies into its own log.

use std::fs::OpenOptions;

use bazaar_runtime::logging;
use slog::Logger;

/// Opens the `log` FIFO of the current directory (the bundle containerd started us in). When
/// there is none (e.g. `delete` run by hand), logs go to stderr.
pub fn for_shim(level: &str, namespace: &str, id: &str) -> Logger {
    let level = logging::parse_level(level).unwrap_or(slog::Level::Info);
    let base = match OpenOptions::new().write(true).open("log") {
        Ok(fifo) => logging::logger(fifo, level),
        Err(_) => logging::logger(std::io::stderr(), level),
    };
    base.new(slog::o!("runtime" => crate::RUNTIME_ID, "namespace" => namespace.to_string(), "id" => id.to_string()))
}
