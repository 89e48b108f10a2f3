//! Network leftovers of a pod: the network namespaces the CRI plugin creates under
//! `/run/netns` (`cni-<uuid>`) and host interfaces (the veths the bridge plugin creates, taps).
//! Neither carries the test's token, so they are found by difference with a snapshot taken
//! before the test; the e2e suite lock keeps other tests' pods off the machine meanwhile.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::process;

/// Where the CRI plugin (containerd 1.6: fixed) mounts pod network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, Clone)]
pub struct NetSnapshot {
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
}

/// New network namespaces and interfaces since a snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetLeaks {
    pub netns: Vec<String>,
    pub links: Vec<String>,
}

impl NetLeaks {
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty() && self.links.is_empty()
    }

    /// One line per leftover, as the leak report words them.
    pub fn describe(&self) -> Vec<String> {
        let netns = self.netns.iter().map(|n| format!("network namespace {NETNS_DIR}/{n}"));
        netns.chain(self.links.iter().map(|l| format!("network interface {l}"))).collect()
    }
}

fn entries(dir: &str) -> BTreeSet<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return BTreeSet::new() };
    rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

impl NetSnapshot {
    pub fn take() -> NetSnapshot {
        NetSnapshot { netns: entries(NETNS_DIR), links: entries("/sys/class/net") }
    }

    /// What appeared since the snapshot: pod namespaces (`cni-*`) and interfaces of the kinds
    /// pods get (veths, taps) or named `bz*` (the test's bridge).
    pub fn new_since(&self) -> NetLeaks {
        let now = NetSnapshot::take();
        NetLeaks {
            netns: now
                .netns
                .difference(&self.netns)
                .filter(|n| n.starts_with("cni-"))
                .cloned()
                .collect(),
            links: now
                .links
                .difference(&self.links)
                .filter(|l| ["veth", "tap", "bz"].iter().any(|p| l.starts_with(p)))
                .cloned()
                .collect(),
        }
    }

    /// Removes what `leaks` lists: interfaces deleted, namespaces unmounted and removed.
    pub fn clean_up(leaks: &NetLeaks) {
        for link in &leaks.links {
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["link", "delete", link]);
            let _ = process::run(cmd, None, Duration::from_secs(10));
        }
        for ns in &leaks.netns {
            let path = Path::new(NETNS_DIR).join(ns);
            crate::containerd::unmount_detach(&path.to_string_lossy());
            if let Err(err) = std::fs::remove_file(&path) {
                eprintln!("bazaar-tests: removing {}: {err}", path.display());
            }
        }
    }
}
