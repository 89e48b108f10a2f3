//! Did the test leave anything behind? Snapshot before, compare after.
//!
//! The machine is shared (other people run containerd and QEMU here), so a leftover counts as
//! ours only when it carries the test's token (the random name of its temp dir, which every
//! container id of the test starts with) or one of its container ids:
//! - processes started since the snapshot whose command line or environment holds it (the shim
//!   gets `-address <our socket>`, helpers get paths under `/run/bazaar/<id>/`, and everything
//!   containerd starts inherits `BAZAAR_CONFIG=<our temp dir>/...`), and their descendants;
//! - mounts whose source, mount point or options hold it;
//! - files: `/run/bazaar/<id>`, the shim socket `/run/containerd/s/<sha256(socket/ns/id)>`,
//!   runc's state `/run/containerd/runc/<ns>/<id>`, ctr's fifos, `/tmp` entries holding the
//!   token.
//!
//! New processes of the Bazaar kinds (qemu-system, shim, virtiofsd, vhost-device-vsock) that
//! carry no token are reported as a warning only: they may be someone else's.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::containerd::{self, Mount, NAMESPACE};
use crate::image::hex;
use crate::process::signal_pid;

/// Command-line fragments of the processes Bazaar starts.
pub const BAZAAR_PROCESS_PATTERNS: &[&str] =
    &["qemu-system", "containerd-shim-bazaar", "virtiofsd", "vhost-device-vsock", "bazaar-vmm"];

/// Where the runtime keeps per-sandbox state (docs/design.md).
pub const BAZAAR_RUN_DIR: &str = "/run/bazaar";

/// Where ctr puts the stdio fifos of its tasks by default.
pub const CTR_FIFO_DIR: &str = "/run/containerd/fifo";

/// Where cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A process seen in /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    /// Start time in clock ticks since boot: with the pid, identifies the process.
    pub start_time: u64,
    /// Exited but not yet reaped: holds nothing but its pid.
    pub zombie: bool,
    pub cmdline: String,
}

/// What one test is answerable for.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The test's token (see [`crate::tempdir::TempDir::token`]).
    pub token: String,
    /// Container ids the test used.
    pub ids: Vec<String>,
    /// The containerd socket the test used (shim socket names are derived from it).
    pub containerd_socket: PathBuf,
    /// The containerd temp dir itself: expected to exist until the harness removes it.
    pub containerd_dir: PathBuf,
}

impl Scope {
    fn matches(&self, text: &str) -> bool {
        (!self.token.is_empty() && text.contains(&self.token))
            || self.ids.iter().any(|id| !id.is_empty() && text.contains(id.as_str()))
    }

    /// Files and directories that exist while a container of the test is alive.
    fn known_paths(&self) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for id in &self.ids {
            paths.push(Path::new(BAZAAR_RUN_DIR).join(id));
            paths.push(shim_socket_path(&self.containerd_socket, NAMESPACE, id));
            paths.push(shim_socket_path(&self.containerd_socket, crate::cri::NAMESPACE, id));
            paths.push(Path::new("/run/containerd/runc").join(NAMESPACE).join(id));
            paths.extend(cgroup_dirs(id));
        }
        paths
    }
}

/// The socket a v2 shim listens on: containerd and the Rust shim crate both name it
/// `/run/containerd/s/<hex sha256 of "<containerd socket>/<namespace>/<id>">`.
pub fn shim_socket_path(containerd_socket: &Path, namespace: &str, id: &str) -> PathBuf {
    let key = containerd_socket.join(namespace).join(id);
    let digest = Sha256::digest(key.to_string_lossy().as_bytes());
    Path::new("/run/containerd/s").join(hex(&digest))
}

/// Leftovers found after a test.
#[derive(Debug, Default, Clone)]
pub struct Leaks {
    pub processes: Vec<ProcInfo>,
    pub mounts: Vec<Mount>,
    pub paths: Vec<PathBuf>,
    /// Other words of failure (e.g. containers still known to containerd).
    pub other: Vec<String>,
    /// New Bazaar-like processes not attributable to the test: printed, not failed on.
    pub unattributed: Vec<ProcInfo>,
}

impl Leaks {
    /// True when nothing attributable to the test is left.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.mounts.is_empty()
            && self.paths.is_empty()
            && self.other.is_empty()
    }

    pub fn report(&self) -> String {
        let mut s = String::new();
        for p in &self.processes {
            let _ = writeln!(s, "  process {} (ppid {}): {}", p.pid, p.ppid, p.cmdline);
        }
        for m in &self.mounts {
            let _ = writeln!(s, "  mount {} on {} type {}", m.source, m.mount_point, m.fs_type);
        }
        for p in &self.paths {
            let _ = writeln!(s, "  path {}", p.display());
        }
        for o in &self.other {
            let _ = writeln!(s, "  {o}");
        }
        s
    }
}

/// The state of the machine before a test.
pub struct LeakCheck {
    before_procs: HashSet<(i32, u64)>,
    before_mounts: HashSet<Mount>,
    /// This process and its ancestors: never leaks.
    own: HashSet<i32>,
}

impl LeakCheck {
    pub fn snapshot() -> Self {
        let procs = processes();
        let own = own_lineage(&procs);
        LeakCheck {
            before_procs: procs.iter().map(|p| (p.pid, p.start_time)).collect(),
            before_mounts: containerd::mounts().into_iter().collect(),
            own,
        }
    }

    /// What is left now that belongs to `scope`.
    pub fn find(&self, scope: &Scope) -> Leaks {
        let mut leaks = Leaks::default();
        let procs = processes();
        let new: Vec<&ProcInfo> = procs
            .iter()
            .filter(|p| !self.before_procs.contains(&(p.pid, p.start_time)))
            .filter(|p| !self.own.contains(&p.pid) && !p.zombie)
            .collect();
        let mut ours: HashSet<i32> = new
            .iter()
            .filter(|p| scope.matches(&p.cmdline) || environ_matches(p.pid, scope))
            .map(|p| p.pid)
            .collect();
        // Descendants of ours are ours.
        loop {
            let before = ours.len();
            for p in &new {
                if ours.contains(&p.ppid) {
                    ours.insert(p.pid);
                }
            }
            if ours.len() == before {
                break;
            }
        }
        for p in new {
            if ours.contains(&p.pid) {
                leaks.processes.push(p.clone());
            } else if BAZAAR_PROCESS_PATTERNS.iter().any(|pat| p.cmdline.contains(pat)) {
                leaks.unattributed.push(p.clone());
            }
        }

        for m in containerd::mounts() {
            if self.before_mounts.contains(&m) {
                continue;
            }
            let text = format!("{} {} {}", m.source, m.mount_point, m.options);
            if scope.matches(&text) {
                leaks.mounts.push(m);
            }
        }

        let mut paths: Vec<PathBuf> = scope.known_paths();
        paths.extend(entries_matching(Path::new(BAZAAR_RUN_DIR), scope));
        paths.extend(entries_matching(Path::new("/tmp"), scope));
        if let Ok(fifo_dirs) = std::fs::read_dir(CTR_FIFO_DIR) {
            for d in fifo_dirs.flatten() {
                paths.extend(entries_matching(&d.path(), scope));
            }
        }
        paths.sort();
        paths.dedup();
        leaks.paths = paths
            .into_iter()
            .filter(|p| p != &scope.containerd_dir)
            .filter(|p| p.symlink_metadata().is_ok())
            .collect();
        leaks
    }

    /// Waits up to `timeout` for teardown to finish, then returns what is still left.
    pub fn wait_until_clean(&self, scope: &Scope, timeout: Duration) -> Leaks {
        let start = Instant::now();
        loop {
            let leaks = self.find(scope);
            if leaks.is_empty() || start.elapsed() >= timeout {
                return leaks;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Removes the leftovers so the machine stays clean: SIGKILL to the leaked PIDs only (after
    /// checking each is still the same process), lazy unmounts, then removal of the paths.
    pub fn clean_up(&self, leaks: &Leaks) {
        for p in &leaks.processes {
            if still_running(p) {
                signal_pid(p.pid, libc::SIGKILL);
            }
        }
        // Give the kernel a moment to end the killed processes and release what they held.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && leaks.processes.iter().any(still_running) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut points: Vec<&str> = leaks.mounts.iter().map(|m| m.mount_point.as_str()).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            containerd::unmount_detach(p);
        }
        for p in &leaks.paths {
            let res = match p.symlink_metadata() {
                Ok(_) if p.starts_with(CGROUP_ROOT) => remove_cgroup(p),
                Ok(md) if md.is_dir() => std::fs::remove_dir_all(p),
                Ok(_) => std::fs::remove_file(p),
                Err(_) => Ok(()),
            };
            if let Err(err) = res {
                eprintln!("bazaar-tests: cannot remove leaked {}: {err}", p.display());
            }
            // ctr's fifo dirs carry no id; remove one once its fifos are gone (rmdir of a
            // non-empty dir fails, which is what we want).
            if let Some(parent) = p.parent().filter(|d| d.starts_with(CTR_FIFO_DIR)) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// The cgroups ctr asks for by default (`/<namespace>/<id>`), in every mounted hierarchy
/// (cgroup v1 controllers, the v1 `unified` v2 mount, or a pure v2 `/sys/fs/cgroup`).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let mut dirs = vec![root.join(NAMESPACE).join(id)];
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path().join(NAMESPACE).join(id));
            }
        }
    }
    dirs
}

/// Removes a cgroup and its children: only `rmdir` works on cgroupfs, depth first.
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

fn entries_matching(dir: &Path, scope: &Scope) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.flatten()
        .filter(|e| scope.matches(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect()
}

fn environ_matches(pid: i32, scope: &Scope) -> bool {
    let Ok(bytes) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    bytes.split(|&b| b == 0).any(|var| scope.matches(&String::from_utf8_lossy(var)))
}

fn own_lineage(procs: &[ProcInfo]) -> HashSet<i32> {
    let by_pid: HashMap<i32, &ProcInfo> = procs.iter().map(|p| (p.pid, p)).collect();
    let mut own = HashSet::new();
    let mut pid = std::process::id() as i32;
    while pid > 1 && own.insert(pid) {
        match by_pid.get(&pid) {
            Some(p) => pid = p.ppid,
            None => break,
        }
    }
    own
}

/// Every process on the machine (one entry per thread group).
pub fn processes() -> Vec<ProcInfo> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_info)
        .collect()
}

/// One process's pid, ppid, start time and command line; `None` if it is gone.
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, ppid, start_time) = parse_stat(&stat)?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = raw
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Some(ProcInfo { pid, ppid, start_time, zombie: state == "Z", cmdline })
}

/// (state, ppid, starttime) from /proc/<pid>/stat; the command name may hold spaces and
/// parentheses, so fields are counted from the last ')'.
fn parse_stat(stat: &str) -> Option<(&str, i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); ppid is field 4, starttime field 22.
    let state = *fields.first()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// True while `p` (same pid, same start time) is alive and not a zombie.
fn still_running(p: &ProcInfo) -> bool {
    proc_info(p.pid).is_some_and(|now| now.start_time == p.start_time && !now.zombie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat =
            "1234 (a (b) c) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(stat), Some(("S", 77, 98765)));
    }

    #[test]
    fn shim_socket_matches_containerd_naming() {
        // sha256("/run/containerd/containerd.sock/default/abc")
        let p = shim_socket_path(Path::new("/run/containerd/containerd.sock"), "default", "abc");
        let expect = hex(&Sha256::digest(b"/run/containerd/containerd.sock/default/abc"));
        assert_eq!(p, Path::new("/run/containerd/s").join(expect));
    }

    #[test]
    fn sees_own_process_and_finds_a_new_child() {
        let check = LeakCheck::snapshot();
        let token = format!("bzt-unit-leak-{}", std::process::id());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; exit 0", &token])
            .spawn()
            .unwrap();
        // Until the child has exec'd, its cmdline is still this test binary's, without the token.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read(&cmdline)
            .unwrap_or_default()
            .windows(token.len())
            .any(|w| w == token.as_bytes())
        {
            assert!(std::time::Instant::now() < deadline, "the child never exec'd");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let scope = Scope {
            token: token.clone(),
            ids: vec![],
            containerd_socket: PathBuf::from("/nonexistent/containerd.sock"),
            containerd_dir: PathBuf::from("/nonexistent"),
        };
        let leaks = check.find(&scope);
        assert!(leaks.processes.iter().any(|p| p.pid == child.id() as i32), "{leaks:?}");
        check.clean_up(&leaks);
        let _ = child.wait();
        assert!(check.find(&scope).is_empty());
    }
}
