//! Namespaces: new ones for a container's init, the container's own for an exec'd process.
//!
//! The guest VM is the pod: namespaces that the spec asks to *join* (a `path`, e.g. the pause
//! container's network namespace under CRI) are the pod's shared ones, and in the guest those are
//! the VM's own, so the container stays in the agent's namespace of that type. A new network
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
    nix::sched::unshare(flags).with_context(|| format!("unshare({flags:?})"))
}

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
