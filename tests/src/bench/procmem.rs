//! Host memory and CPU of a sandbox's processes, and the guest's `/proc/meminfo`.
//!
//! A sandbox is its shim (found by its `-id` and `-address` arguments: one shim per container
//! under `ctr run`) and every descendant: QEMU, virtiofsd and vhost-device-vsock for Bazaar, the
//! container's processes for runc. Memory is the PSS of `/proc/<pid>/smaps_rollup`: pages shared
//! between processes (guest RAM mapped by QEMU and both vhost-user helpers, libraries, the
//! kernel and initrd files) are divided among their users, so sums over processes and over
//! sandboxes count each page once.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::leaks::{self, ProcInfo};

/// PSS and its parts, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    pub rss: u64,
    pub pss: u64,
    pub pss_anon: u64,
    pub pss_file: u64,
    pub pss_shmem: u64,
}

impl Mem {
    pub fn add(&mut self, o: &Mem) {
        self.rss += o.rss;
        self.pss += o.pss;
        self.pss_anon += o.pss_anon;
        self.pss_file += o.pss_file;
        self.pss_shmem += o.pss_shmem;
    }
}

/// Parses `smaps_rollup` text (values in kB).
pub fn parse_smaps_rollup(text: &str) -> Mem {
    let mut m = Mem::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else { continue };
        let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        match key {
            "Rss" => m.rss = v,
            "Pss" => m.pss = v,
            "Pss_Anon" => m.pss_anon = v,
            "Pss_File" => m.pss_file = v,
            "Pss_Shmem" => m.pss_shmem = v,
            _ => {}
        }
    }
    m
}

/// The memory of one process; `None` once it is gone.
pub fn process_mem(pid: i32) -> Option<Mem> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .map(|t| parse_smaps_rollup(&t))
}

/// user + system CPU time of one process so far, in seconds; `None` once it is gone.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf(3) has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// The short name of a process: its program's file name.
pub fn short_name(p: &ProcInfo) -> String {
    let prog = p.cmdline.split(' ').next().unwrap_or_default();
    Path::new(prog).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The shim of container `id` on containerd `socket` (`shim_binary` is e.g.
/// `containerd-shim-bazaar-v2`) and all its descendants, the shim first.
pub fn sandbox_processes(shim_binary: &str, socket: &Path, id: &str) -> Vec<ProcInfo> {
    let procs = leaks::processes();
    let id_arg = format!(" -id {id} ");
    let address_arg = format!(" -address {} ", socket.display());
    let Some(shim) = procs.iter().find(|p| {
        let args = format!("{} ", p.cmdline);
        !p.zombie
            && short_name(p) == shim_binary
            && args.contains(&id_arg)
            && args.contains(&address_arg)
    }) else {
        return Vec::new();
    };
    let mut tree = vec![shim.clone()];
    let mut ours: HashSet<i32> = HashSet::from([shim.pid]);
    loop {
        let before = ours.len();
        for p in &procs {
            if !p.zombie && ours.contains(&p.ppid) && ours.insert(p.pid) {
                tree.push(p.clone());
            }
        }
        if ours.len() == before {
            return tree;
        }
    }
}

/// `/proc/meminfo` as key -> KiB.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_rollup() {
        let text = "00400000-7ffc [rollup]\nRss:  138596 kB\nPss:  121507 kB\n\
                    Pss_Dirty: 1 kB\nPss_Anon: 63592 kB\nPss_File: 14619 kB\nPss_Shmem: 43295 kB\n";
        let m = parse_smaps_rollup(text);
        assert_eq!(
            m,
            Mem { rss: 138596, pss: 121507, pss_anon: 63592, pss_file: 14619, pss_shmem: 43295 }
        );
        let mut sum = m;
        sum.add(&m);
        assert_eq!(sum.pss, 243014);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        assert!(process_mem(me).unwrap().pss > 0);
        assert!(cpu_secs(me).is_some());
        assert!(process_mem(-5).is_none());
    }

    #[test]
    fn finds_a_shim_and_its_children() {
        // A stand-in "shim": a shell named like one, with the arguments a shim gets.
        let dir = crate::tempdir::TempDir::new("bzt-unit-shim").unwrap();
        let fake = dir.path().join("containerd-shim-fake-v2");
        std::os::unix::fs::symlink("/bin/sh", &fake).unwrap();
        let mut child = std::process::Command::new(&fake)
            .args(["-c", "sleep 30 & wait", "-id", "x1", "-address", "/s/c.sock", "end"])
            .spawn()
            .unwrap();
        let mut tree = Vec::new();
        for _ in 0..100 {
            tree = sandbox_processes("containerd-shim-fake-v2", Path::new("/s/c.sock"), "x1");
            if tree.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tree.len(), 2, "{tree:?}");
        assert_eq!(tree[0].pid, child.id() as i32);
        assert_eq!(short_name(&tree[1]), "sleep");
        assert!(
            sandbox_processes("containerd-shim-fake-v2", Path::new("/s/c.sock"), "x").is_empty()
        );
        // The orphaned sleep is killed by PID.
        crate::process::signal_pid(tree[1].pid, libc::SIGKILL);
    }

    #[test]
    fn parses_meminfo() {
        let m = parse_meminfo("MemTotal:  248248 kB\nMemFree:   223160 kB\nHugePages_Total: 0\n");
        assert_eq!(m["MemTotal"], 248248);
        assert_eq!(m["MemFree"], 223160);
        assert_eq!(m["HugePages_Total"], 0);
    }
}
