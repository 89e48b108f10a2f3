//! A containerd of the test's own: own config, socket, root and state directory in a temp dir.
//!
//! A system containerd (if any) is never contacted or touched. The child is stopped by its PID
//! (SIGTERM, then SIGKILL), anything still mounted under its directories is unmounted and
//! reported, and the temp dir is removed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{self, Output};
use crate::tempdir::TempDir;

/// The containerd namespace every test uses.
pub const NAMESPACE: &str = "default";

/// containerd's CRI plugin: disabled unless a test drives pods ([`Options::cri`]).
pub const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";

/// Plugins the tests do not need; leaving them out makes containerd start faster.
const DISABLED_PLUGINS: &[&str] = &[
    CRI_PLUGIN,
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

/// Overrides containerd's log level (default `info`; shim output is logged whatever the level).
pub const LOG_LEVEL_ENV: &str = "BAZAAR_TEST_CONTAINERD_LOG_LEVEL";

/// How containerd is started.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Directories put first on containerd's `PATH` (where it finds runtime shims).
    pub path_prepend: Vec<PathBuf>,
    /// Extra environment for containerd, and so for every shim it starts.
    pub env: Vec<(String, String)>,
    /// Enables the CRI plugin with these settings (its CNI config is written before start).
    pub cri: Option<crate::cri::setup::CriSettings>,
}

pub struct PrivateContainerd {
    dir: TempDir,
    child: Option<Child>,
    pid: i32,
    /// How it was started, for [`PrivateContainerd::restart`].
    options: Options,
}

impl PrivateContainerd {
    /// Starts a containerd in a fresh temp dir.
    pub fn start(options: &Options) -> Result<Self> {
        Self::start_in(TempDir::new("bzt")?, options)
    }

    /// Starts a containerd whose files all live in `dir` (which it then owns).
    pub fn start_in(dir: TempDir, options: &Options) -> Result<Self> {
        let config_path = dir.path().join("containerd.toml");
        let mut config = config_toml(dir.path(), options.cri.is_some());
        if let Some(cri) = &options.cri {
            cri.network.write()?;
            config.push_str(&cri.containerd_toml());
        }
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log_path = dir.path().join("containerd.log");
        let log = File::create(&log_path)?;
        let child = spawn_containerd(&config_path, log, options)?;
        let pid = child.id() as i32;
        let mut me = PrivateContainerd { dir, child: Some(child), pid, options: options.clone() };
        me.wait_ready(Duration::from_secs(30))?;
        Ok(me)
    }

    /// Stops containerd (SIGTERM, as [`PrivateContainerd::stop`]) and starts it again with the
    /// same configuration, root, state and environment; its log goes on in the same file. The
    /// shims it started keep running meanwhile and are reconnected by the new containerd.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let config_path = self.dir.path().join("containerd.toml");
        let log = std::fs::OpenOptions::new().append(true).open(self.log_path())?;
        let child = spawn_containerd(&config_path, log, &self.options)?;
        self.pid = child.id() as i32;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }
}

/// Starts `containerd --config <config_path>`, its output to `log`.
fn spawn_containerd(config_path: &Path, log: File, options: &Options) -> Result<Child> {
    let mut path = options.path_prepend.clone();
    path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(config_path)
        .arg("--log-level")
        .arg(std::env::var(LOG_LEVEL_ENV).unwrap_or_else(|_| "info".into()))
        .env("PATH", std::env::join_paths(path)?)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.spawn().context("cannot start containerd (is it installed?)")
}

impl PrivateContainerd {
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!(
                    "containerd exited with {status} while starting; log:\n{}",
                    self.log_tail(40)
                );
            }
            if self.socket().exists() {
                let out = self.ctr(&["version"], Duration::from_secs(5))?;
                if out.success() {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                bail!("containerd did not answer within {timeout:?}; log:\n{}", self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The unique token of this containerd's temp dir (see [`TempDir::token`]).
    pub fn token(&self) -> String {
        self.dir.token()
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// containerd's GRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// The last `lines` lines of containerd's log (shim logs included), less the plugin
    /// loading messages of its start.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| !l.contains("loading plugin")).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A `ctr` command aimed at this containerd.
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).arg("--namespace").arg(NAMESPACE);
        cmd
    }

    /// Runs `ctr <args>` against this containerd.
    pub fn ctr(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        self.ctr_in(NAMESPACE, args, timeout)
    }

    /// Runs `ctr <args>` in containerd namespace `namespace` (the CRI plugin's is `k8s.io`).
    pub fn ctr_in(&self, namespace: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).arg("--namespace").arg(namespace).args(args);
        process::run(cmd, None, timeout)
    }

    /// Stops containerd (SIGTERM, up to 10 s, then SIGKILL). Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        process::signal_pid(self.pid, libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bazaar-tests: containerd {} ignored SIGTERM for 10 s, killing it", self.pid);
        let _ = child.kill();
        child.wait()?;
        Ok(())
    }

    /// Unmounts whatever is still mounted under the temp dir and returns those mount points.
    pub fn unmount_leftovers(&self) -> Vec<String> {
        let prefix = format!("{}/", self.dir.path().display());
        let mut points: Vec<String> =
            mount_points().into_iter().filter(|m| m.starts_with(&prefix)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in &points {
            unmount_detach(p);
        }
        points
    }

    /// Keeps the temp dir (config, log, root) after drop, for debugging.
    pub fn keep_dir(&mut self) {
        self.dir.keep();
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("bazaar-tests: stopping containerd {}: {err:#}", self.pid);
        }
        let left = self.unmount_leftovers();
        if !left.is_empty() {
            eprintln!("bazaar-tests: LEAK: mounts left under containerd's dir: {left:?}");
        }
        if let Err(err) = self.dir.remove() {
            eprintln!("bazaar-tests: {err:#}");
        }
    }
}

/// containerd's configuration for a private instance living in `dir`; `with_cri` leaves the CRI
/// plugin enabled (its own section is appended by the caller).
pub fn config_toml(dir: &Path, with_cri: bool) -> String {
    let d = dir.display();
    let disabled: Vec<String> = DISABLED_PLUGINS
        .iter()
        .filter(|p| !(with_cri && **p == CRI_PLUGIN))
        .map(|p| format!("\"{p}\""))
        .collect();
    format!(
        r#"# Private containerd for Bazaar tests: nothing here is shared with a system containerd.
version = 2
root = "{d}/root"
state = "{d}/state"
oom_score = 0
disabled_plugins = [{disabled}]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
        disabled = disabled.join(", ")
    )
}

/// Mount points in this mount namespace, unescaped.
pub fn mount_points() -> Vec<String> {
    mounts().into_iter().map(|m| m.mount_point).collect()
}

/// One line of /proc/self/mounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mount {
    pub source: String,
    pub mount_point: String,
    pub fs_type: String,
    pub options: String,
}

pub fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            Some(Mount {
                source: unescape(f.next()?),
                mount_point: unescape(f.next()?),
                fs_type: f.next()?.to_string(),
                options: unescape(f.next()?),
            })
        })
        .collect()
}

/// Undoes the octal escapes (`\040` for a space) of /proc/mounts.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts `point`; errors are printed, not returned (this is cleanup).
pub fn unmount_detach(point: &str) {
    let Ok(c) = std::ffi::CString::new(point) else { return };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        eprintln!("bazaar-tests: umount {point}: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_in_the_dir() {
        let text = config_toml(Path::new("/tmp/bzt-abc"), false);
        assert!(text.contains("version = 2\n"));
        assert!(text.contains("root = \"/tmp/bzt-abc/root\""));
        assert!(text.contains("state = \"/tmp/bzt-abc/state\""));
        assert!(text.contains("address = \"/tmp/bzt-abc/containerd.sock\""));
        assert!(text.contains("address = \"/tmp/bzt-abc/containerd.sock.ttrpc\""));
        assert!(text.contains("\"io.containerd.grpc.v1.cri\""));
        assert!(!config_toml(Path::new("/tmp/bzt-abc"), true).contains("grpc.v1.cri"));
        for line in text.lines().filter(|l| l.contains('/')) {
            assert!(line.contains("/tmp/bzt-abc/") || line.starts_with('#'), "{line}");
        }
    }

    #[test]
    fn unescapes_mount_fields() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("\\"), "\\");
    }
}
