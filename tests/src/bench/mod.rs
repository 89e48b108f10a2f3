//! The pieces of `bazaar-bench` (`make bench`) that are worth unit tests: statistics, timed
//! commands that a Ctrl-C stops, the shim's log turned into a start-up breakdown, and memory and
//! CPU figures read from `/proc`.
//!
//! The benchmark itself (`src/bin/bazaar-bench.rs`) runs on the e2e harness: [`crate::fixture`]
//! gives it a private containerd, the busybox image, the suite lock and, at the end, the leak
//! check that proves it left nothing behind.

pub mod lab;
pub mod options;
pub mod procmem;
pub mod shimlog;
pub mod stats;
pub mod timed;
pub mod vmm;
