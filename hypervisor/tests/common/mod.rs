//! Shared pieces of the VM tests: guest files, a logger, and cleanup guards.

#![allow(dead_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bazaar_hypervisor::qemu::{Qemu, QemuPaths};
use bazaar_hypervisor::{kill_recorded, Acceleration, ProcessRecord, VmConfig};
use slog::{Drain, Logger};
use tokio::sync::mpsc;

/// The guest kernel, or `None` (after a loud note on stderr) when the test must be skipped.
pub fn guest_kernel() -> Option<PathBuf> {
    let path = match std::env::var_os("BAZAAR_TEST_KERNEL") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/guest/bzImage"),
    };
    if path.is_file() {
        Some(path)
    } else {
        bazaar_tests::skip::skip(
            "hypervisor VM test",
            &format!("no guest kernel at {}; run make guest-image", path.display()),
        );
        None
    }
}

/// The backend's programs, or `None` (after a loud note on stderr) when one is missing.
pub fn qemu_paths() -> Option<QemuPaths> {
    let defaults = QemuPaths::default();
    let pick =
        |var: &str, default: PathBuf| std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    let paths = QemuPaths {
        qemu: pick("BAZAAR_TEST_QEMU", defaults.qemu),
        virtiofsd: pick("BAZAAR_TEST_VIRTIOFSD", defaults.virtiofsd),
        vhost_vsock: pick("BAZAAR_TEST_VHOST_VSOCK", defaults.vhost_vsock),
    };
    for path in [&paths.qemu, &paths.virtiofsd, &paths.vhost_vsock] {
        if !path.is_file() {
            bazaar_tests::skip::skip(
                "hypervisor VM test",
                &format!("{} is missing; run scripts/install-deps.sh", path.display()),
            );
            return None;
        }
    }
    Some(paths)
}

/// Writes a newc cpio archive holding /bin/busybox, /init (a busybox shell script running
/// `script`), /dev/console, a few empty directories and the `extra` executables (archive name,
/// host file).
pub fn write_initrd(path: &Path, script: &str, extra: &[(&str, &Path)]) -> std::io::Result<()> {
    let busybox = std::fs::read("/bin/busybox")?;
    let init = format!("#!/bin/busybox sh\n{script}\n");
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "mnt", "tmp"] {
        cpio.entry(dir, 0o040755, 0, &[]);
    }
    cpio.entry("dev/console", 0o020600, 5 << 8 | 1, &[]);
    cpio.entry("bin/busybox", 0o100755, 0, &busybox);
    cpio.entry("init", 0o100755, 0, init.as_bytes());
    for (name, source) in extra {
        cpio.entry(name, 0o100755, 0, &std::fs::read(source)?);
    }
    std::fs::write(path, cpio.finish())
}

/// The "new ASCII" cpio format, just enough for an initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// `rdev` is `major << 8 | minor` for device nodes.
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.out
    }
}

/// A logger printing to stderr (shown by `cargo test -- --nocapture` or on failure).
pub fn logger() -> Logger {
    Logger::root(StderrDrain.fuse(), slog::o!())
}

struct StderrDrain;

impl Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KvLine(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let _ = slog::KV::serialize(values, record, &mut kv);
        eprintln!("{} {}{}", record.level().as_short_str(), record.msg(), kv.0);
        Ok(())
    }
}

struct KvLine(String);

impl slog::Serializer for KvLine {
    fn emit_arguments(&mut self, key: slog::Key, value: &fmt::Arguments) -> slog::Result {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}

/// A test VM: its temp dir, the backend, the console lines, and a guard that ends the recorded
/// processes and removes the temp dir even when the test fails.
pub struct TestVm {
    pub qemu: Qemu,
    pub console: mpsc::UnboundedReceiver<String>,
    pub run_dir: PathBuf,
    pub shared_dir: PathBuf,
    pub guard: Guard,
}

/// Ends recorded processes by PID (start time checked) on drop; declared after the backend in
/// `TestVm` so it runs after the backend's own drop, before the temp dir goes.
pub struct Guard {
    pub records: Vec<ProcessRecord>,
    pub dir: Option<tempfile::TempDir>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        kill_recorded(&self.records);
    }
}

/// Builds a VM whose init runs `script`; `None` when the test must be skipped.
pub fn test_vm(script: &str, memory_mib: u32) -> Option<TestVm> {
    test_vm_with(script, memory_mib, |_| Some(Vec::new()))
}

/// Like `test_vm`, with extra executables in the initrd, made by `extra` in the temp dir.
pub fn test_vm_with(
    script: &str,
    memory_mib: u32,
    extra: impl FnOnce(&Path) -> Option<Vec<(&'static str, PathBuf)>>,
) -> Option<TestVm> {
    let kernel = guest_kernel()?;
    let paths = qemu_paths()?;
    let dir = tempfile::Builder::new().prefix("bazaar-hv-").tempdir().expect("temp dir");
    let extra = extra(dir.path())?;
    let extra: Vec<(&str, &Path)> =
        extra.iter().map(|(name, path)| (*name, path.as_path())).collect();
    let run_dir = dir.path().join("run");
    let shared_dir = dir.path().join("shared");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::create_dir_all(&shared_dir).unwrap();
    let initrd = dir.path().join("initrd.cpio");
    write_initrd(&initrd, script, &extra).expect("writing the initrd");
    let config = VmConfig {
        sandbox_id: "hvtest".into(),
        vcpus: 1,
        memory_mib,
        kernel,
        initrd,
        extra_kernel_params: String::new(),
        run_dir: run_dir.clone(),
        acceleration: Acceleration::Auto,
        tcg_cache_mib: 0,
    };
    let (tx, console) = mpsc::unbounded_channel();
    let qemu = Qemu::new(config, paths, logger()).expect("Qemu::new").with_console_sink(tx);
    Some(TestVm {
        qemu,
        console,
        run_dir,
        shared_dir,
        guard: Guard { records: Vec::new(), dir: Some(dir) },
    })
}

impl TestVm {
    /// Waits for a console line containing `marker`; returns the lines seen up to it.
    pub async fn wait_for_console(&mut self, marker: &str, limit: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(limit, async {
            while let Some(line) = self.console.recv().await {
                let hit = line.contains(marker);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(found, Ok(true)),
            "console marker {marker:?} not seen within {limit:?}; console so far:\n{}",
            seen.join("\n")
        );
        seen
    }
}

/// Whether the process of `record` is gone (or a zombie, or its PID reused).
pub fn is_gone(record: &ProcessRecord) -> bool {
    match bazaar_hypervisor::process_start_time(record.pid) {
        Ok(start) if start == record.start_time => {
            std::fs::read_to_string(format!("/proc/{}/stat", record.pid))
                .map(|stat| {
                    stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        }
        _ => true,
    }
}

/// Proportional set size of `pid` in KiB, from /proc/<pid>/smaps_rollup.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A guest program: listens on vsock `port` (any CID), prints `VSOCK-LISTENING` and echoes
/// every connection's bytes back until the peer closes.
const VSOCK_ECHO_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>

int main(int argc, char **argv) {
    struct sockaddr_vm addr = {0};
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = (unsigned)atoi(argv[1]);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); return 1; }
    if (listen(fd, 4) < 0) { perror("listen"); return 1; }
    printf("VSOCK-LISTENING\n");
    fflush(stdout);
    for (;;) {
        char buf[4096];
        ssize_t n;
        int conn = accept(fd, NULL, NULL);
        if (conn < 0) { perror("accept"); return 1; }
        while ((n = read(conn, buf, sizeof buf)) > 0) {
            if (write(conn, buf, (size_t)n) != n) break;
        }
        close(conn);
    }
}
"#;

/// Compiles the vsock echo server as a static binary into `dir`; `None` (after a loud note)
/// without a C compiler or static libc.
pub fn build_vsock_echo(dir: &Path) -> Option<PathBuf> {
    let source = dir.join("vsock_echo.c");
    let binary = dir.join("vsock_echo");
    std::fs::write(&source, VSOCK_ECHO_C).ok()?;
    let output = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .output();
    match output {
        Ok(out) if out.status.success() => Some(binary),
        Ok(out) => {
            bazaar_tests::skip::skip(
                "hypervisor vsock echo test",
                &format!("cc -static failed: {}", String::from_utf8_lossy(&out.stderr)),
            );
            None
        }
        Err(err) => {
            bazaar_tests::skip::skip(
                "hypervisor vsock echo test",
                &format!("no C compiler for the guest vsock echo server ({err})"),
            );
            None
        }
    }
}

/// Pss of `pid` in KiB summed per mapping name (`[anon]` for unnamed), largest first.
pub fn pss_by_mapping(pid: u32) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut sums: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: range perms offset dev inode [name]
            current = fields.nth(4).map(str::to_string).unwrap_or_else(|| "[anon]".into());
        } else if first == "Pss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *sums.entry(current.clone()).or_default() += kib;
        }
    }
    let mut out: Vec<_> = sums.into_iter().collect();
    out.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    out
}
