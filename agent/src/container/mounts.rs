//! The spec's mounts, done in order inside the container's mount namespace before the root
//! switch. Destinations are resolved inside the rootfs ([`super::rootfs`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

use super::rootfs;
use super::sync::{ErrorCode, SetupError};

/// Mount options of the spec split into flags, propagation and filesystem data.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// MS_SHARED / MS_PRIVATE / MS_SLAVE / MS_UNBINDABLE, with MS_REC for the r-forms.
    pub propagation: MsFlags,
    /// Options the kernel takes as data (`size=65536k`, `mode=755`, `newinstance`, ...).
    pub data: Vec<String>,
    pub bind: bool,
}

/// Splits OCI mount options (as `mount(8)` spells them).
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut parsed = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
        bind: false,
    };
    for option in options {
        let (set, clear): (MsFlags, MsFlags) = match option.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "bind" => {
                parsed.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                parsed.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                parsed.propagation |= propagation_flags(option).unwrap_or(MsFlags::empty());
                continue;
            }
            // containerd/runc-only hints without a kernel meaning.
            "tmpcopyup" | "rro" | "rrw" | "rnosuid" | "rnodev" | "rnoexec" => continue,
            data => {
                parsed.data.push(data.to_string());
                continue;
            }
        };
        parsed.flags.insert(set);
        parsed.flags.remove(clear);
    }
    parsed
}

/// The propagation flags of `private`, `rslave`, ... (also used for `rootfsPropagation`).
pub fn propagation_flags(name: &str) -> Option<MsFlags> {
    let (recursive, base) = match name.strip_prefix('r') {
        Some(base) if !base.is_empty() => (true, base),
        _ => (false, name),
    };
    let flag = match base {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => return None,
    };
    Some(if recursive { flag | MsFlags::MS_REC } else { flag })
}

/// What a `cgroup` mount shows the container.
#[derive(Debug, Clone, Copy)]
pub struct CgroupView<'a> {
    /// The container's cgroup directory in the agent's tree, if it has one.
    pub dir: Option<&'a Path>,
    /// Whether the container has a cgroup namespace of its own.
    pub own_namespace: bool,
}

/// Performs the spec's mounts under `root`. Returns whether `/dev` was mounted by the spec (it
/// then needs the default device nodes).
pub fn mount_all(root: &Path, mounts: &[Mount], cgroup: &CgroupView<'_>) -> anyhow::Result<bool> {
    let mut dev_mounted = false;
    for m in mounts {
        let destination = m.destination();
        mount_one(root, m, cgroup).with_context(|| {
            format!(
                "mount {} ({}) on {}",
                m.source().as_deref().unwrap_or(Path::new("none")).display(),
                m.typ().as_deref().unwrap_or("bind"),
                destination.display()
            )
        })?;
        if destination == Path::new("/dev") {
            dev_mounted = true;
        }
    }
    Ok(dev_mounted)
}

fn mount_one(root: &Path, m: &Mount, cgroup: &CgroupView<'_>) -> anyhow::Result<()> {
    let options = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("");
    if options.bind || typ == "bind" {
        return bind_mount(root, m, &options);
    }
    if let ("cgroup" | "cgroup2", false, Some(dir)) = (typ, cgroup.own_namespace, cgroup.dir) {
        // Without a cgroup namespace a fresh cgroup2 mount would show the whole guest hierarchy
        // (the agent's and the other containers' cgroups). runc shows a container its own
        // cgroups only (on cgroup v1 each controller's directory of the container, bound); do the
        // same with the container's cgroup v2 directory.
        let own = Mount::default()
            .set_destination(m.destination().clone())
            .set_source(Some(dir.to_path_buf()))
            .to_owned();
        return bind_mount(root, &own, &options);
    }
    let target = rootfs::mkdir_in_root(root, m.destination()).context("create the mount point")?;
    let fstype = match typ {
        // runc's "cgroup" means "the cgroup filesystem of this host"; the guest has v2 only.
        "cgroup" | "cgroup2" => "cgroup2",
        "" => {
            return Err(SetupError::new(ErrorCode::InvalidArgument, "mount without a type").into())
        }
        other => other,
    };
    let source: PathBuf = m.source().clone().unwrap_or_else(|| PathBuf::from(fstype));
    let data = options.data.join(",");
    let flags = options.flags;
    mount(
        Some(&source),
        &target,
        Some(fstype),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )?;
    if !options.propagation.is_empty() {
        mount(None::<&str>, &target, None::<&str>, options.propagation, None::<&str>)
            .context("set the propagation")?;
    }
    Ok(())
}

fn bind_mount(root: &Path, m: &Mount, options: &MountOptions) -> anyhow::Result<()> {
    let source = m.source().as_ref().ok_or_else(|| {
        SetupError::new(ErrorCode::InvalidArgument, "bind mount without a source")
    })?;
    let meta = std::fs::metadata(source).map_err(|err| {
        SetupError::new(
            ErrorCode::NotFound,
            format!("bind mount source {} is not accessible: {err}", source.display()),
        )
    })?;
    let target = if meta.is_dir() {
        rootfs::mkdir_in_root(root, m.destination())
    } else {
        rootfs::touch_in_root(root, m.destination())
    }
    .context("create the mount point")?;
    let bind_flags = MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC);
    mount(Some(source), &target, None::<&str>, bind_flags, None::<&str>)?;
    // Bind mounts ignore the other flags; they take effect on a remount.
    let extra = options.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if !extra.is_empty() {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            extra | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .context("remount with the bind mount's options")?;
    }
    if !options.propagation.is_empty() {
        mount(None::<&str>, &target, None::<&str>, options.propagation, None::<&str>)
            .context("set the propagation")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_and_data_are_split() {
        let parsed = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(parsed.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(parsed.data, vec!["mode=755", "size=65536k"]);
        assert!(!parsed.bind);
    }

    #[test]
    fn later_options_win() {
        assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
        assert_eq!(opts(&["rw", "ro"]).flags, MsFlags::MS_RDONLY);
    }

    #[test]
    fn bind_options() {
        let parsed = opts(&["rbind", "ro", "rprivate"]);
        assert!(parsed.bind);
        assert_eq!(parsed.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(parsed.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    }

    #[test]
    fn propagation_names() {
        assert_eq!(propagation_flags("slave"), Some(MsFlags::MS_SLAVE));
        assert_eq!(propagation_flags("rshared"), Some(MsFlags::MS_SHARED | MsFlags::MS_REC));
        assert_eq!(propagation_flags("r"), None);
        assert_eq!(propagation_flags("bogus"), None);
    }
}
