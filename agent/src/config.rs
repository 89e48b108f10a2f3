//! Command line and kernel command line of the agent.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use slog::Level;

/// Where the runtime's share is mounted in the guest; every guest path the runtime writes into a
/// spec (root.path, bind mount sources) starts with it.
pub const GUEST_SHARED_DIR: &str = "/run/bazaar/shared";

const USAGE: &str = "\
usage: bazaar-agent [--listen ADDR] [--shared-dir DIR] [--cgroup-root DIR] [--log-level LEVEL]
                    [--no-pivot]

  --listen ADDR        ttrpc address: vsock://CID:PORT or unix:///path (default vsock://-1:1024)
  --shared-dir DIR     host test mode: use DIR as the shared filesystem instead of mounting the
                       virtio-fs tag at /run/bazaar/shared; spec paths under /run/bazaar/shared
                       are mapped into DIR
  --cgroup-root DIR    cgroup v2 mount to create container cgroups in (default /sys/fs/cgroup)
  --log-level LEVEL    critical, error, warning, info, debug or trace (default info; the kernel
                       command line's bazaar.log=LEVEL sets it when the agent is PID 1)
  --no-pivot           enter container roots with MS_MOVE + chroot instead of pivot_root (used
                       automatically where pivot_root is impossible, e.g. an initramfs root)";

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// ttrpc listen address.
    pub listen: String,
    /// The directory holding the runtime's share (container roots and bind mount sources).
    pub shared_dir: PathBuf,
    /// Whether CreateSandbox mounts the virtio-fs tag at `shared_dir` (false in host test mode).
    pub mount_shared_fs: bool,
    /// The cgroup v2 mount that container cgroups are created in.
    pub cgroup_root: PathBuf,
    pub log_level: Level,
    /// Whether the log level was given on the command line (it then wins over the kernel's).
    log_level_from_flag: bool,
    pub no_pivot: bool,
    /// Whether the agent is PID 1 of the guest.
    pub pid1: bool,
}

/// What the command line asks for.
pub enum Parsed {
    Run(Config),
    /// Print the message and exit successfully (`--help`, `--version`).
    Exit(String),
}

impl Config {
    /// Parses the arguments after the program name.
    pub fn from_args(args: &[String], pid1: bool) -> anyhow::Result<Parsed> {
        let mut config = Config {
            listen: format!("vsock://-1:{}", bazaar_protocols::AGENT_VSOCK_PORT),
            shared_dir: PathBuf::from(GUEST_SHARED_DIR),
            mount_shared_fs: true,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            log_level: Level::Info,
            log_level_from_flag: false,
            no_pivot: false,
            pid1,
        };
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = || -> anyhow::Result<String> {
                match &inline {
                    Some(value) => Ok(value.clone()),
                    None => iter.next().cloned().with_context(|| format!("{flag} needs a value")),
                }
            };
            match flag {
                "--listen" => config.listen = value()?,
                "--shared-dir" => {
                    config.shared_dir = PathBuf::from(value()?);
                    config.mount_shared_fs = false;
                }
                "--cgroup-root" => config.cgroup_root = PathBuf::from(value()?),
                "--log-level" => {
                    let level = value()?;
                    config.log_level = parse_level(&level)
                        .with_context(|| format!("unknown log level {level:?}"))?;
                    config.log_level_from_flag = true;
                }
                "--no-pivot" => config.no_pivot = true,
                "--help" | "-h" => return Ok(Parsed::Exit(USAGE.to_string())),
                "--version" => {
                    return Ok(Parsed::Exit(format!("bazaar-agent {}", env!("CARGO_PKG_VERSION"))))
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        if !config.listen.starts_with("unix://") && !config.listen.starts_with("vsock://") {
            bail!("--listen must be vsock://CID:PORT or unix:///path, not {:?}", config.listen);
        }
        Ok(Parsed::Run(config))
    }

    /// Maps a path of a spec into this agent's shared directory: a path under
    /// `/run/bazaar/shared` moves under `--shared-dir` (in the guest this changes nothing).
    pub fn map_shared_path(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(GUEST_SHARED_DIR) {
            Ok(rest) if self.shared_dir != Path::new(GUEST_SHARED_DIR) => {
                self.shared_dir.join(rest)
            }
            _ => path.to_path_buf(),
        }
    }

    /// Takes `bazaar.log=LEVEL` from /proc/cmdline unless `--log-level` was given.
    pub fn apply_kernel_cmdline(&mut self) {
        if self.log_level_from_flag {
            return;
        }
        if let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline") {
            if let Some(level) = log_level_from_cmdline(&cmdline) {
                self.log_level = level;
            }
        }
    }
}

/// Parses a level name as slog spells it, plus `warn`.
pub fn parse_level(name: &str) -> Option<Level> {
    match name.to_ascii_lowercase().as_str() {
        "warn" => Some(Level::Warning),
        other => other.parse().ok(),
    }
}

/// The level of the last `bazaar.log=LEVEL` word of a kernel command line.
pub fn log_level_from_cmdline(cmdline: &str) -> Option<Level> {
    cmdline
        .split_whitespace()
        .rev()
        .filter_map(|word| word.strip_prefix("bazaar.log="))
        .find_map(parse_level)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match Config::from_args(&args, false)? {
            Parsed::Run(config) => Ok(config),
            Parsed::Exit(_) => bail!("unexpected exit"),
        }
    }

    #[test]
    fn defaults_listen_on_vsock() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen, "vsock://-1:1024");
        assert!(config.mount_shared_fs);
        assert_eq!(config.shared_dir, PathBuf::from(GUEST_SHARED_DIR));
    }

    #[test]
    fn host_test_flags() {
        let config = parse(&[
            "--listen",
            "unix:///tmp/a.sock",
            "--shared-dir=/tmp/shared",
            "--log-level",
            "debug",
            "--no-pivot",
        ])
        .unwrap();
        assert_eq!(config.listen, "unix:///tmp/a.sock");
        assert_eq!(config.shared_dir, PathBuf::from("/tmp/shared"));
        assert!(!config.mount_shared_fs);
        assert_eq!(config.log_level, Level::Debug);
        assert!(config.no_pivot);
    }

    #[test]
    fn maps_shared_paths_in_test_mode() {
        let config = parse(&["--shared-dir", "/tmp/s"]).unwrap();
        let map = |p: &str| config.map_shared_path(Path::new(p));
        assert_eq!(map("/run/bazaar/shared/c1/rootfs"), PathBuf::from("/tmp/s/c1/rootfs"));
        assert_eq!(map("/run/bazaar/sharedx/c1"), PathBuf::from("/run/bazaar/sharedx/c1"));
        assert_eq!(map("/other/rootfs"), PathBuf::from("/other/rootfs"));
        let guest = parse(&[]).unwrap();
        assert_eq!(
            guest.map_shared_path(Path::new("/run/bazaar/shared/c1/rootfs")),
            PathBuf::from("/run/bazaar/shared/c1/rootfs")
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--listen", "tcp://1.2.3.4:5"]).is_err());
        assert!(parse(&["--log-level", "loud"]).is_err());
    }

    #[test]
    fn kernel_cmdline_log_level() {
        let cmdline = "console=ttyS0 bazaar.log=info rdinit=/init bazaar.log=debug\n";
        assert_eq!(log_level_from_cmdline(cmdline), Some(Level::Debug));
        assert_eq!(log_level_from_cmdline("console=ttyS0"), None);
        assert_eq!(log_level_from_cmdline("bazaar.log=warn"), Some(Level::Warning));
    }
}
