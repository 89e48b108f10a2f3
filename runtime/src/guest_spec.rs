//! Turns the OCI spec containerd wrote for the host into the spec the guest agent runs.
//!
//! Host paths mean nothing inside the VM. The rootfs and every bind-mount source are made
//! visible through the virtio-fs share, so their paths are rewritten to where the share is
//! mounted in the guest; a namespace to join (a `path`: under CRI, the pod's network namespace
//! and the pause container's IPC and UTS ones) becomes the VM's own namespace of that type,
//! `/proc/1/ns/<type>` in the guest: the VM is the pod, so the pod's shared namespaces are the
//! ones the guest's PID 1 holds, which the agent keeps such a container in. Hooks are not
//! carried into the guest.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Mount, Spec};

/// Where the agent mounts the shared filesystem in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/bazaar/shared";

/// A host path that must be bind-mounted into the shared directory before the guest can see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRequest {
    pub host_source: PathBuf,
    /// Relative to the sandbox's shared directory on the host.
    pub shared_relative: PathBuf,
    pub readonly: bool,
}

/// The rewritten spec and the host binds it relies on.
#[derive(Debug)]
pub struct GuestSpec {
    pub spec: Spec,
    pub shares: Vec<ShareRequest>,
}

/// Path of a container's rootfs relative to the shared directory.
pub fn shared_rootfs_relative(container_id: &str) -> PathBuf {
    PathBuf::from(container_id).join("rootfs")
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .as_ref()
            .is_some_and(|opts| opts.iter().any(|o| o == "bind" || o == "rbind"))
}

fn is_readonly(mount: &Mount) -> bool {
    mount.options().as_ref().is_some_and(|opts| opts.iter().any(|o| o == "ro"))
}

/// The guest's own namespace of type `typ`: the one its PID 1 (the agent) is in.
fn vm_namespace_path(typ: LinuxNamespaceType) -> PathBuf {
    let name = match typ {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Time => "time",
    };
    Path::new("/proc/1/ns").join(name)
}

/// The annotation the CRI plugin puts on each container it creates; `sandbox` marks the pod's
/// pause container.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The annotation naming, on each container of a CRI pod, the pod's pause container.
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The pause container's id, for an app container of a CRI pod.
pub fn cri_sandbox_id(spec: &Spec) -> Option<&str> {
    let annotations = spec.annotations().as_ref()?;
    (annotations.get(CRI_CONTAINER_TYPE)? == "container")
        .then(|| annotations.get(CRI_SANDBOX_ID).map(String::as_str))
        .flatten()
}

/// A pod-shared PID namespace is the pause container's, as under runc: when the host spec joins
/// `/proc/<pause_pid>/ns/pid` (CRI names it by the pid the runtime reported, the pause process's
/// guest pid), the guest spec joins that namespace in the guest instead of the VM's.
pub fn join_pod_pid_namespace(guest: &mut Spec, host: &Spec, pause_pid: u32) {
    let pause_namespace = PathBuf::from(format!("/proc/{pause_pid}/ns/pid"));
    let joins_pause = host
        .linux()
        .as_ref()
        .and_then(|linux| linux.namespaces().as_ref())
        .into_iter()
        .flatten()
        .any(|ns| {
            ns.typ() == LinuxNamespaceType::Pid && ns.path().as_ref() == Some(&pause_namespace)
        });
    if !joins_pause {
        return;
    }
    if let Some(mut linux) = guest.linux().clone() {
        if let Some(namespaces) = linux.namespaces().clone() {
            let rewritten = namespaces
                .into_iter()
                .map(|mut ns| {
                    if ns.typ() == LinuxNamespaceType::Pid {
                        ns.set_path(Some(pause_namespace.clone()));
                    }
                    ns
                })
                .collect();
            linux.set_namespaces(Some(rewritten));
        }
        guest.set_linux(Some(linux));
    }
}

/// Whether `spec` is a CRI pod's pause container.
pub fn is_cri_sandbox(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|annotations| annotations.get(CRI_CONTAINER_TYPE))
        .is_some_and(|kind| kind == "sandbox")
}

/// A pod asking for a host namespace (`NamespaceMode::NODE`: hostNetwork, hostPID, hostIPC)
/// gets a pause container without a namespace of that type. A VM cannot share the host's
/// namespaces, and silently running such a pod in the VM's would hide the host's network or
/// processes it expects to see, so the pod is refused with the reason.
fn refuse_host_namespaces(namespaces: &[LinuxNamespace]) -> Result<()> {
    for (typ, kind, field) in [
        (LinuxNamespaceType::Network, "network", "hostNetwork"),
        (LinuxNamespaceType::Pid, "pid", "hostPID"),
        (LinuxNamespaceType::Ipc, "ipc", "hostIPC"),
    ] {
        if !namespaces.iter().any(|ns| ns.typ() == typ) {
            anyhow::bail!(
                "the pod asks for the host's {kind} namespace ({field}), which a Bazaar pod \
                 cannot share: it runs in its own VM; run it with runc instead"
            );
        }
    }
    Ok(())
}

/// A CRI pause container's IPC and UTS namespaces become the VM's: the app containers' joins of
/// the pause container's ones are rewritten to the VM's (below), so the pod-level settings the
/// pause container carries (IPC sysctls such as `kernel.shm_rmid_forced`) land where the app
/// containers are. Its PID namespace stays its own: pod-shared PID namespaces are the VM's.
fn share_sandbox_namespaces(namespaces: Vec<LinuxNamespace>) -> Vec<LinuxNamespace> {
    namespaces
        .into_iter()
        .map(|mut ns| {
            if matches!(ns.typ(), LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts) {
                ns.set_path(Some(vm_namespace_path(ns.typ())));
            }
            ns
        })
        .collect()
}

/// Rewrites `spec` for the guest. `bundle` resolves a relative bind source the way runc does.
pub fn for_guest(mut spec: Spec, container_id: &str, bundle: &Path) -> Result<GuestSpec> {
    let guest_root = Path::new(GUEST_SHARED_DIR).join(shared_rootfs_relative(container_id));
    let mut root = spec.root().clone().context("the OCI spec has no root")?;
    root.set_path(guest_root);
    spec.set_root(Some(root));

    let mut shares = Vec::new();
    if let Some(mounts) = spec.mounts().clone() {
        let mut rewritten = Vec::with_capacity(mounts.len());
        for (index, mut mount) in mounts.into_iter().enumerate() {
            if is_bind(&mount) {
                let source = mount.source().clone().with_context(|| {
                    format!("bind mount to {} has no source", mount.destination().display())
                })?;
                let host_source = if source.is_absolute() { source } else { bundle.join(source) };
                let shared_relative =
                    PathBuf::from(container_id).join("mounts").join(index.to_string());
                mount.set_source(Some(Path::new(GUEST_SHARED_DIR).join(&shared_relative)));
                shares.push(ShareRequest {
                    host_source,
                    shared_relative,
                    readonly: is_readonly(&mount),
                });
            }
            rewritten.push(mount);
        }
        spec.set_mounts(Some(rewritten));
    }

    let sandbox = is_cri_sandbox(&spec);
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(mut namespaces) = linux.namespaces().clone() {
            if sandbox {
                refuse_host_namespaces(&namespaces)?;
                namespaces = share_sandbox_namespaces(namespaces);
            }
            // Host paths (and the host pids in them) mean nothing in the guest: keep only that
            // the namespace is shared, pointing at the VM's.
            let rewritten: Vec<LinuxNamespace> = namespaces
                .into_iter()
                .map(|mut ns| {
                    if ns.path().is_some() {
                        // A container always gets a mount namespace of its own in the guest
                        // (its rootfs is set up there); the others are the VM's.
                        let shared = (ns.typ() != LinuxNamespaceType::Mount)
                            .then(|| vm_namespace_path(ns.typ()));
                        ns.set_path(shared);
                    }
                    ns
                })
                .collect();
            linux.set_namespaces(Some(rewritten));
        }
        spec.set_linux(Some(linux));
    }
    spec.set_hooks(None);
    Ok(GuestSpec { spec, shares })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_from(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "source": "hosts", "options": ["bind"]}
        ],
        "linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"}
        ]}
    }"#;

    #[test]
    fn root_and_binds_point_into_the_share() {
        let guest = for_guest(spec_from(SPEC), "c1", Path::new("/bundle")).unwrap();
        let root = guest.spec.root().clone().unwrap();
        assert_eq!(root.path(), Path::new("/run/bazaar/shared/c1/rootfs"));
        assert_eq!(root.readonly(), Some(true));

        let mounts = guest.spec.mounts().clone().unwrap();
        assert_eq!(mounts[0].source().clone().unwrap(), PathBuf::from("proc"));
        assert_eq!(
            mounts[1].source().clone().unwrap(),
            PathBuf::from("/run/bazaar/shared/c1/mounts/1")
        );
        assert_eq!(
            mounts[2].source().clone().unwrap(),
            PathBuf::from("/run/bazaar/shared/c1/mounts/2")
        );

        assert_eq!(
            guest.shares,
            vec![
                ShareRequest {
                    host_source: PathBuf::from("/srv/data"),
                    shared_relative: PathBuf::from("c1/mounts/1"),
                    readonly: true
                },
                ShareRequest {
                    host_source: PathBuf::from("/bundle/hosts"),
                    shared_relative: PathBuf::from("c1/mounts/2"),
                    readonly: false
                },
            ]
        );
    }

    #[test]
    fn joined_namespaces_become_the_vms() {
        let guest = for_guest(spec_from(SPEC), "c1", Path::new("/bundle")).unwrap();
        let namespaces = guest.spec.linux().clone().unwrap().namespaces().clone().unwrap();
        assert_eq!(namespaces.len(), 2);
        assert_eq!(namespaces[0].path(), &None, "a new namespace stays new");
        assert_eq!(namespaces[1].path(), &Some(PathBuf::from("/proc/1/ns/net")));
    }

    fn pause_spec(namespaces: &str) -> Spec {
        spec_from(&format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}},
                "annotations": {{"io.kubernetes.cri.container-type": "sandbox"}},
                "linux": {{"namespaces": [{namespaces}]}}}}"#
        ))
    }

    #[test]
    fn an_app_container_joins_the_pause_containers_pid_namespace() {
        let host = spec_from(
            r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                "annotations": {"io.kubernetes.cri.container-type": "container",
                                "io.kubernetes.cri.sandbox-id": "pause1"},
                "linux": {"namespaces": [{"type": "mount"},
                    {"type": "pid", "path": "/proc/35/ns/pid"},
                    {"type": "ipc", "path": "/proc/35/ns/ipc"}]}}"#,
        );
        assert_eq!(cri_sandbox_id(&host), Some("pause1"));
        let pid_path = |spec: &Spec| {
            let namespaces = spec.linux().clone().unwrap().namespaces().clone().unwrap();
            let ns = namespaces.iter().find(|ns| ns.typ() == LinuxNamespaceType::Pid).cloned();
            ns.and_then(|ns| ns.path().clone())
        };
        let mut guest = for_guest(host.clone(), "c1", Path::new("/b")).unwrap().spec;
        assert_eq!(pid_path(&guest), Some(PathBuf::from("/proc/1/ns/pid")));
        // Another pid than the pause container's: the VM's namespace stays.
        join_pod_pid_namespace(&mut guest, &host, 36);
        assert_eq!(pid_path(&guest), Some(PathBuf::from("/proc/1/ns/pid")));
        join_pod_pid_namespace(&mut guest, &host, 35);
        assert_eq!(pid_path(&guest), Some(PathBuf::from("/proc/35/ns/pid")));
        assert_eq!(cri_sandbox_id(&pause_spec(r#"{"type": "pid"}"#)), None);
    }

    #[test]
    fn a_pause_container_shares_the_vms_ipc_and_uts() {
        let spec = pause_spec(
            r#"{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
               {"type": "network", "path": "/var/run/netns/cni-1"}"#,
        );
        let guest = for_guest(spec, "pause", Path::new("/b")).unwrap();
        let namespaces = guest.spec.linux().clone().unwrap().namespaces().clone().unwrap();
        let paths: Vec<_> = namespaces.iter().map(|ns| ns.path().clone()).collect();
        let vm = |name: &str| Some(PathBuf::from(format!("/proc/1/ns/{name}")));
        assert_eq!(paths, vec![None, vm("ipc"), vm("uts"), None, vm("net")]);
    }

    #[test]
    fn a_pod_in_host_namespaces_is_refused() {
        let all = [r#"{"type": "pid"}"#, r#"{"type": "ipc"}"#, r#"{"type": "network"}"#];
        for (left_out, field) in [(0, "hostPID"), (1, "hostIPC"), (2, "hostNetwork")] {
            let kept: Vec<&str> =
                all.iter().enumerate().filter(|(i, _)| *i != left_out).map(|(_, n)| *n).collect();
            let err = for_guest(pause_spec(&kept.join(",")), "p", Path::new("/b")).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        // An ordinary container without a network namespace (`ctr run --net-host`) is not a pod.
        let spec = spec_from(
            r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                "linux": {"namespaces": [{"type": "pid"}]}}"#,
        );
        assert!(for_guest(spec, "c", Path::new("/b")).is_ok());
    }

    #[test]
    fn spec_without_root_is_an_error() {
        let spec = spec_from(r#"{"ociVersion": "1.0.2"}"#);
        let err = for_guest(spec, "c1", Path::new("/b")).unwrap_err();
        assert!(err.to_string().contains("root"));
    }
}
