//! The settings of `bazaar-bench`, read from its `BENCH_*` environment variables.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

/// The benchmark's settings, from `BENCH_*` environment variables (README, "Benchmarks").
pub struct Options {
    pub runs: usize,
    pub density: Vec<usize>,
    pub density_samples: usize,
    pub io_runs: usize,
    pub stdout_mib: u64,
    pub file_mib: u64,
    pub settle: Duration,
    pub sections: Vec<String>,
    pub hypervisor_extra: String,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().map_err(|_| anyhow!("{name}={v:?} is not a number"))
        }
        _ => Ok(default),
    }
}

impl Options {
    /// Reads the settings; a malformed value is an error naming the variable.
    pub fn from_env() -> Result<Options> {
        let density = std::env::var("BENCH_DENSITY").unwrap_or_else(|_| "1 10 50".into());
        let mut density: Vec<usize> = density
            .split_whitespace()
            .map(|s| s.parse().map_err(|_| anyhow!("BENCH_DENSITY: {s:?} is not a number")))
            .collect::<Result<_>>()?;
        density.sort_unstable();
        density.dedup();
        density.retain(|&n| n > 0);
        let sections = std::env::var("BENCH_SECTIONS")
            .unwrap_or_else(|_| "latency memory density io vmm lab".into())
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>();
        for s in &sections {
            if !["latency", "memory", "density", "io", "vmm", "lab"].contains(&s.as_str()) {
                bail!(
                    "BENCH_SECTIONS: unknown section {s:?} (latency, memory, density, io, vmm, lab)"
                );
            }
        }
        Ok(Options {
            runs: env_num("BENCH_RUNS", 10usize)?.max(1),
            density,
            density_samples: env_num("BENCH_DENSITY_SAMPLES", 3usize)?.max(1),
            io_runs: env_num("BENCH_IO_RUNS", 2usize)?.max(1),
            stdout_mib: env_num("BENCH_STDOUT_MIB", 256u64)?.max(1),
            file_mib: env_num("BENCH_FILE_MIB", 256u64)?.max(1),
            settle: Duration::from_secs_f64(env_num("BENCH_SETTLE_SECS", 5.0f64)?.max(0.0)),
            sections,
            hypervisor_extra: std::env::var("BENCH_HYPERVISOR_EXTRA").unwrap_or_default(),
        })
    }

    /// Whether `section` is among `BENCH_SECTIONS`.
    pub fn wants(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}
