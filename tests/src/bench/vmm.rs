//! `make bench` section 6: the built-in VMM on its own. Each run starts `bazaar-vmm` on a
//! hand-made guest (it prints a line and halts; this project's build hosts' KVM cannot run
//! Linux), with a vsock and a block device attached, and reads:
//! - the VMM's start-up: from spawn to vCPU 0 entering the guest (wall clock, as the VMM's boot
//!   timeline reports it, plus exec and dynamic loading), and the CPU time it used until then;
//! - the VMM's own memory: its PSS once the guest halted, with a 256 MiB guest that touched
//!   almost none of its RAM, so the figure is the VMM's overhead.
//!
//! Firecracker's published bar: VMM start within 8 CPU-ms, at most 5 MiB of VMM overhead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::procmem::{self, Mem};
use super::stats::Summary;
use crate::tiny_kernel;

/// One run's figures.
#[derive(Debug, Clone, Copy)]
pub struct VmmRun {
    /// Spawn to "vCPU 0 enters the kernel", measured here.
    pub to_guest: Duration,
    /// The same as the VMM reports it, from its own `main`.
    pub to_guest_in_process_ms: f64,
    /// user + system CPU of the VMM at that point.
    pub cpu_ms: f64,
    /// The VMM's memory once the guest is idle.
    pub mem: Mem,
}

/// The figures of `runs` runs of `vmm`, or why they cannot be taken here.
pub fn measure(vmm: &Path, runs: usize, settle: Duration) -> Result<Vec<VmmRun>> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("/dev/kvm is not usable here")?;
    if !vmm.is_file() {
        bail!("no built-in VMM at {} (make build)", vmm.display());
    }
    let dir = crate::tempdir::TempDir::new("bzb-vmm").context("temp dir")?;
    let kernel = dir.path().join("vmlinux");
    let halt = vec![0xf4, 0xeb, 0xfd]; // hlt; jmp back to it
    std::fs::write(&kernel, tiny_kernel::elf(&[tiny_kernel::print("up\n"), halt].concat()))?;
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20])?;
    (0..runs)
        .map(|i| one_run(vmm, &kernel, &disk, &dir.path().join(format!("v{i}.sock")), settle))
        .collect()
}

fn one_run(
    vmm: &Path,
    kernel: &Path,
    disk: &Path,
    vsock: &Path,
    settle: Duration,
) -> Result<VmmRun> {
    let started = Instant::now();
    let mut child = Command::new(vmm)
        .arg("--kernel")
        .arg(kernel)
        .args(["--memory-mib", "256"])
        .arg("--vsock")
        .arg(format!("cid=3,socket={}", vsock.display()))
        .arg("--disk")
        .arg(format!("path={},readonly=on", disk.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", vmm.display()))?;
    let result = read_run(&mut child, started, settle);
    // Ended by its PID (the child is ours and not reaped, so the PID is still its own).
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn read_run(child: &mut Child, started: Instant, settle: Duration) -> Result<VmmRun> {
    let pid = child.id() as i32;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let marker = "bazaar-vmm: boot: vCPU 0 enters the kernel at ";
    let in_process_ms = loop {
        let line =
            lines.next().ok_or_else(|| anyhow!("the VMM ended before entering the guest"))??;
        if let Some(rest) = line.strip_prefix(marker) {
            break rest.trim_end_matches(" ms").parse::<f64>().context("boot timeline line")?;
        }
    };
    let to_guest = started.elapsed();
    let cpu_ms = cpu_ns_of_threads(pid) as f64 / 1e6;
    std::thread::sleep(settle);
    let mem = procmem::process_mem(pid).ok_or_else(|| anyhow!("the VMM is gone"))?;
    Ok(VmmRun { to_guest, to_guest_in_process_ms: in_process_ms, cpu_ms, mem })
}

/// CPU time of every live thread of `pid`, in ns, from each thread's schedstat (first field:
/// time on a CPU). Finer than /proc/<pid>/stat, whose clock ticks are 10 ms here.
fn cpu_ns_of_threads(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path().join("schedstat");
            std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Prints section 6 for `vmm` (or why it could not run).
pub fn print_section(vmm: &Path, runs: usize) {
    println!();
    println!("6. Built-in VMM (bazaar-vmm) on a hand-made guest, {runs} runs: vsock + blk attached, 256 MiB");
    println!("   (this host's KVM cannot run Linux, so kernel boot and agent are not part of it)");
    let runs = match measure(vmm, runs, Duration::from_millis(500)) {
        Ok(runs) => runs,
        Err(err) => {
            println!("   NOT MEASURED: {err:#}");
            return;
        }
    };
    let ms = |f: fn(&VmmRun) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>());
    println!("                                                  median      min      max");
    let row = |label: &str, s: Option<Summary>| match s {
        Some(s) => println!("   {label:<44}{:>9.1}{:>9.1}{:>9.1}", s.median, s.min, s.max),
        None => println!("   {label:<44}{:>9}", "n/a"),
    };
    row("spawn to guest entry, wall ms", ms(|r| r.to_guest.as_secs_f64() * 1000.0));
    row("  of which in the VMM's main, wall ms", ms(|r| r.to_guest_in_process_ms));
    row("CPU used until guest entry, ms", ms(|r| r.cpu_ms));
    row("VMM PSS, MiB", ms(|r| r.mem.pss as f64 / 1024.0));
    row("  anonymous, MiB", ms(|r| r.mem.pss_anon as f64 / 1024.0));
    row("  file (binary, libraries), MiB", ms(|r| r.mem.pss_file as f64 / 1024.0));
    row("  guest RAM touched (shmem), MiB", ms(|r| r.mem.pss_shmem as f64 / 1024.0));
    println!("   Firecracker's bar: VMM start <= 8 CPU-ms, VMM overhead <= 5 MiB");
}

/// The VMM cargo built beside the running binary.
pub fn default_binary() -> PathBuf {
    crate::paths::profile_dir().join("bazaar-vmm")
}
