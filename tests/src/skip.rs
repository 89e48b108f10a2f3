//! Skipped tests, made impossible to miss.
//!
//! cargo has no "skipped" outcome: a test that cannot run here returns early and is counted as
//! passed. So a skip prints a loud line and appends it to the file named by `BAZAAR_SKIP_LOG`;
//! `scripts/run-tests.sh` sets that variable, prints every recorded skip at the end and counts
//! them as skipped, not passed, in its total line.

use std::io::Write;

/// The environment variable naming the skip log.
pub const SKIP_LOG_ENV: &str = "BAZAAR_SKIP_LOG";

/// Reports that `test` was skipped and why.
pub fn skip(test: &str, reason: &str) {
    eprintln!("\n!!!!!! SKIPPED {test}: {reason} !!!!!!\n");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let line = format!("{test}: {}\n", reason.replace('\n', " "));
        // One short O_APPEND write per skip: lines from parallel tests do not interleave.
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = file.write_all(line.as_bytes());
        }
    }
}
