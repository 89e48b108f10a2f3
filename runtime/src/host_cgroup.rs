//! The pod's cgroup on the host. Under CRI the kubelet accounts a pod by its cgroup
//! (`PodSandboxConfig.linux.cgroup_parent`, which containerd reads for PodSandboxStats); the
//! pause container's `linux.cgroupsPath` is a child of it. Under runc the pod's processes are
//! there; under Bazaar they are in the guest, and what the pod costs the host is the VMM. So the
//! runtime creates the pause container's cgroup on the host, as runc would, and moves the VMM
//! into it (as Kata's `sandbox_cgroup_only`): the host's figures for the pod are the VM's.
//! Container-level figures come from the guest's cgroups (the agent's stats).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The host cgroup a CRI pod's VMM goes into: its pause container's `linux.cgroupsPath`.
pub fn pod_cgroup_path(spec: &Spec) -> Option<String> {
    if !crate::guest_spec::is_cri_sandbox(spec) {
        return None;
    }
    let path = spec.linux().as_ref()?.cgroups_path().clone()?;
    Some(path.to_string_lossy().into_owned())
}

/// One cgroup path in every hierarchy mounted under /sys/fs/cgroup.
#[derive(Debug, Clone)]
pub struct HostCgroup {
    dirs: Vec<PathBuf>,
}

/// The roots of the mounted hierarchies: every directory of /sys/fs/cgroup holding
/// `cgroup.procs` (cgroup v1 controllers, named and unified hierarchies), or /sys/fs/cgroup
/// itself on a pure cgroup v2 host. cpuset is left out: a new cpuset cgroup takes no process
/// until its cpus and mems are filled in, and it accounts nothing.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        // Symlinks (cpu -> cpu,cpuacct) name a hierarchy already listed.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().contains("cpuset")))
        .collect();
    found.sort();
    found
}

impl HostCgroup {
    /// The cgroup `cgroups_path` (an OCI `linux.cgroupsPath` in cgroupfs form, `/parent/name`)
    /// in every hierarchy, created or not. systemd's `slice:prefix:name` form is refused.
    pub fn at(cgroups_path: &str) -> Result<HostCgroup> {
        if cgroups_path.contains(':') || !cgroups_path.starts_with('/') {
            bail!("cgroup path {cgroups_path:?} is not a cgroupfs path (/parent/name)");
        }
        let relative = cgroups_path.trim_start_matches('/');
        if relative.split('/').any(|part| part == "..") {
            bail!("cgroup path {cgroups_path:?} leaves the cgroup root");
        }
        let dirs: Vec<PathBuf> = hierarchies().iter().map(|h| h.join(relative)).collect();
        if dirs.is_empty() {
            bail!("no cgroup hierarchy is mounted under {CGROUP_ROOT}");
        }
        Ok(HostCgroup { dirs })
    }

    /// Creates the cgroup `cgroups_path` (see [`HostCgroup::at`]) in every hierarchy.
    pub fn create(cgroups_path: &str) -> Result<HostCgroup> {
        let cgroup = HostCgroup::at(cgroups_path)?;
        for dir in &cgroup.dirs {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the pod's cgroup {}", dir.display()))?;
        }
        Ok(cgroup)
    }

    /// Moves process `pid` into the cgroup in every hierarchy.
    pub fn add(&self, pid: u32) -> Result<()> {
        for dir in &self.dirs {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string())
                .with_context(|| format!("moving pid {pid} into {}", procs.display()))?;
        }
        Ok(())
    }

    /// Removes the cgroup (not its parents, which the kubelet or runc own). A process that just
    /// exited may hold it for a moment, so an EBUSY is retried for a while.
    pub fn remove(&self) -> Result<()> {
        for dir in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
                    Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                        if Instant::now() > deadline {
                            return Err(err).with_context(|| {
                                format!("removing the pod's cgroup {}: still in use", dir.display())
                            });
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(err) => {
                        return Err(err).with_context(|| format!("removing {}", dir.display()))
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pause_containers_cgroup_is_the_pods() {
        let spec = |annotations: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion": "1.0.2", "annotations": {{{annotations}}},
                    "linux": {{"cgroupsPath": "/pods/abc"}}}}"#
            ))
            .unwrap()
        };
        let pause = spec(r#""io.kubernetes.cri.container-type": "sandbox""#);
        assert_eq!(pod_cgroup_path(&pause).as_deref(), Some("/pods/abc"));
        let app = spec(r#""io.kubernetes.cri.container-type": "container""#);
        assert_eq!(pod_cgroup_path(&app), None);
        assert_eq!(pod_cgroup_path(&spec("")), None);
    }

    #[test]
    fn only_cgroupfs_paths_are_taken() {
        for bad in ["kubepods.slice:cri-containerd:abc", "relative/path", "/a/../../etc"] {
            assert!(HostCgroup::at(bad).is_err(), "{bad}");
        }
    }
}
