//! Namespaces: new ones for a container's init, the container's own for an exec'd process.
//!
//! The guest VM is the pod: namespaces that the spec asks to *join* (a `path`, e.g. the pause
//! container's network namespace under CRI) are the pod's shared ones, and in the guest those are
//! the VM's own, so the container stays in the agent's namespace of that type. The exception is a
//! pod-shared PID namespace: it is the pause container's (its init is PID 1 there, as under
//! runc), which the runtime names by the pause process's guest pid. A new network
//! namespace is never created either: every container of the sandbox uses the VM's network.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use anyhow::Context;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use super::sync::{ErrorCode, SetupError};

/// The namespaces to unshare for a new container: (flags, types left shared with the VM).
pub fn unshare_plan(
    namespaces: &[LinuxNamespace],
) -> Result<(CloneFlags, Vec<LinuxNamespaceType>), SetupError> {
    let mut flags = CloneFlags::empty();
    let mut shared = Vec::new();
    for ns in namespaces {
        let flag = match ns.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::Network => {
                shared.push(ns.typ());
                continue;
            }
            LinuxNamespaceType::User => {
                return Err(SetupError::new(
                    ErrorCode::InvalidArgument,
                    "user namespaces are not supported by the bazaar agent",
                ))
            }
            LinuxNamespaceType::Time => {
                return Err(SetupError::new(
                    ErrorCode::InvalidArgument,
                    "time namespaces are not supported by the bazaar agent",
                ))
            }
        };
        if ns.path().is_some() {
            if ns.typ() == LinuxNamespaceType::Mount {
                return Err(SetupError::new(
                    ErrorCode::InvalidArgument,
                    "joining an existing mount namespace is not supported",
                ));
            }
            shared.push(ns.typ());
            continue;
        }
        flags |= flag;
    }
    if !flags.contains(CloneFlags::CLONE_NEWNS) {
        return Err(SetupError::new(
            ErrorCode::InvalidArgument,
            "the spec must ask for a new mount namespace (linux.namespaces: mount)",
        ));
    }
    Ok((flags, shared))
}

/// Whether the container gets a UTS namespace of its own (so its hostname may be set).
pub fn has_own_uts(spec: &Spec) -> bool {
    spec.linux().as_ref().and_then(|linux| linux.namespaces().as_ref()).is_some_and(|namespaces| {
        namespaces.iter().any(|ns| ns.typ() == LinuxNamespaceType::Uts && ns.path().is_none())
    })
}

/// Whether the container gets a cgroup namespace of its own (its cgroup is then the root of what
/// a cgroup mount shows).
pub fn has_own_cgroup(spec: &Spec) -> bool {
    spec.linux().as_ref().and_then(|linux| linux.namespaces().as_ref()).is_some_and(|namespaces| {
        namespaces.iter().any(|ns| ns.typ() == LinuxNamespaceType::Cgroup && ns.path().is_none())
    })
}

/// Unshares the new namespaces of a container's init (in the single-threaded helper; the new
/// PID namespace applies to the child it forks next).
pub fn enter_new(spec: &Spec) -> anyhow::Result<()> {
    let namespaces =
        spec.linux().as_ref().and_then(|linux| linux.namespaces().clone()).unwrap_or_default();
    let (flags, _shared) = unshare_plan(&namespaces)?;
    nix::sched::unshare(flags).with_context(|| format!("unshare({flags:?})"))?;
    if let Some(path) = joined_pid_namespace(&namespaces) {
        // Like a new one, a joined PID namespace applies to the child forked next.
        let file = File::open(path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWPID)
            .with_context(|| format!("setns into the PID namespace {path}"))?;
    }
    Ok(())
}

/// The PID namespace of another container of the pod that the spec joins (CRI's shared PID
/// namespace: the pause container's, `/proc/<its pid>/ns/pid` in the guest), if it is not
/// the VM's own.
fn joined_pid_namespace(namespaces: &[LinuxNamespace]) -> Option<&str> {
    let path = namespaces
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Pid)?
        .path()
        .as_ref()?
        .to_str()?;
    (path != VM_PID_NAMESPACE).then_some(path)
}

/// How the runtime names the VM's own PID namespace (the agent's).
const VM_PID_NAMESPACE: &str = "/proc/1/ns/pid";

/// Joins the namespaces and the root directory of the container whose init has `init_pid`; the
/// mount namespace last, because the others are opened through the agent's /proc.
pub fn join(init_pid: i32) -> anyhow::Result<()> {
    let proc_dir = format!("/proc/{init_pid}");
    let root = File::open(format!("{proc_dir}/root")).map_err(|err| {
        SetupError::new(
            ErrorCode::FailedPrecondition,
            format!("the container's init (pid {init_pid}) is gone: {err}"),
        )
    })?;
    let kinds = [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut to_join = Vec::new();
    for (name, flag) in kinds {
        let theirs = format!("{proc_dir}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(theirs_meta), Ok(ours_meta)) =
            (std::fs::metadata(&theirs), std::fs::metadata(&ours))
        else {
            continue; // namespace type not supported by this kernel
        };
        if theirs_meta.ino() == ours_meta.ino() && theirs_meta.dev() == ours_meta.dev() {
            continue;
        }
        let file = File::open(&theirs).with_context(|| format!("open {theirs}"))?;
        to_join.push((name, file, flag));
    }
    for (name, file, flag) in to_join {
        nix::sched::setns(&file, flag)
            .with_context(|| format!("setns into the container's {name} namespace"))?;
    }
    nix::unistd::fchdir(&root).context("fchdir to the container's root")?;
    nix::unistd::chroot(".").context("chroot to the container's root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxNamespaceBuilder;

    #[test]
    fn only_another_containers_pid_namespace_is_joined() {
        let pid = |path: Option<&str>| vec![ns(LinuxNamespaceType::Pid, path)];
        assert_eq!(joined_pid_namespace(&pid(Some("/proc/35/ns/pid"))), Some("/proc/35/ns/pid"));
        assert_eq!(joined_pid_namespace(&pid(Some("/proc/1/ns/pid"))), None);
        assert_eq!(joined_pid_namespace(&pid(None)), None);
        assert_eq!(joined_pid_namespace(&[ns(LinuxNamespaceType::Ipc, Some("/x"))]), None);
    }

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let builder = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(path) => builder.path(path).build().unwrap(),
            None => builder.build().unwrap(),
        }
    }

    #[test]
    fn new_namespaces_are_unshared_and_network_is_shared() {
        let (flags, shared) = unshare_plan(&[
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::Ipc, None),
            ns(LinuxNamespaceType::Uts, None),
            ns(LinuxNamespaceType::Network, None),
        ])
        .unwrap();
        assert_eq!(
            flags,
            CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
        );
        assert_eq!(shared, vec![LinuxNamespaceType::Network]);
    }

    #[test]
    fn namespaces_with_a_path_stay_shared() {
        let (flags, shared) = unshare_plan(&[
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::Ipc, Some("/proc/42/ns/ipc")),
        ])
        .unwrap();
        assert_eq!(flags, CloneFlags::CLONE_NEWNS);
        assert_eq!(shared, vec![LinuxNamespaceType::Ipc]);
    }

    #[test]
    fn unsupported_plans_are_invalid() {
        let no_mount = unshare_plan(&[ns(LinuxNamespaceType::Pid, None)]).unwrap_err();
        assert_eq!(no_mount.code, ErrorCode::InvalidArgument);
        let user = unshare_plan(&[
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::User, None),
        ])
        .unwrap_err();
        assert_eq!(user.code, ErrorCode::InvalidArgument);
    }
}
