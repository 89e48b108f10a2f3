//! Device nodes and the standard `/dev` symlinks of a container, created under the rootfs before
//! the root switch.

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::rootfs;

/// The devices every container gets in its `/dev` (OCI runtime spec, "Default Devices").
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The symlinks of a standard `/dev`.
const DEV_SYMLINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Populates the container's `/dev` in runc's order: the spec's devices, then (when the spec
/// mounted a fresh `/dev`) the default devices the spec does not name and the standard symlinks,
/// `/dev/ptmx` last as a link to `pts/ptmx`. A node that
/// exists already is kept, as runc keeps it.
pub fn setup(root: &Path, default_dev: bool, devices: &[LinuxDevice]) -> anyhow::Result<()> {
    for device in devices {
        create_spec_device(root, device)
            .with_context(|| format!("create device {}", device.path().display()))?;
    }
    if default_dev {
        for (name, major, minor) in DEFAULT_DEVICES {
            let path = Path::new("/dev").join(name);
            if devices.iter().any(|device| device.path() == &path) {
                continue;
            }
            let node = Node { kind: SFlag::S_IFCHR, major, minor, mode: 0o666, uid: 0, gid: 0 };
            let resolved = rootfs::resolve_in_root(root, &path)?;
            make_node(&resolved, &node, &path)
                .with_context(|| format!("create {}", path.display()))?;
        }
        let dev = rootfs::resolve_in_root(root, Path::new("/dev"))?;
        for (name, target) in DEV_SYMLINKS {
            let link = dev.join(name);
            if name == "ptmx" {
                // Whatever the spec or the image put there gives way to the devpts multiplexer.
                match std::fs::remove_file(&link) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err).context("remove /dev/ptmx"),
                }
            }
            match symlink(target, &link) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(err).with_context(|| format!("symlink /dev/{name}")),
            }
        }
    }
    Ok(())
}

/// Binds the terminal `slave` (a /dev/pts/N path of the container's devpts) over
/// `/dev/console`, as runc does, so that programs writing to the console reach the terminal.
/// Runs inside the container's root, after the root switch.
pub fn bind_console(slave: &Path) -> anyhow::Result<()> {
    let console = rootfs::touch_in_root(Path::new("/"), Path::new("/dev/console"))
        .context("create /dev/console")?;
    mount(Some(slave), &console, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind the terminal {} on /dev/console", slave.display()))?;
    Ok(())
}

fn create_spec_device(root: &Path, device: &LinuxDevice) -> anyhow::Result<()> {
    let kind = match device.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => anyhow::bail!("device type 'a' is only valid in cgroup rules"),
    };
    let node = Node {
        kind,
        major: device.major() as u64,
        minor: device.minor() as u64,
        mode: device.file_mode().unwrap_or(0o666),
        uid: device.uid().unwrap_or(0),
        gid: device.gid().unwrap_or(0),
    };
    let path = rootfs::resolve_in_root(root, device.path())?;
    if let Some(parent) = device.path().parent() {
        // 0755 whatever the umask, as runc creates them (e.g. /dev/net for /dev/net/tun).
        rootfs::mkdir_in_root(root, parent)?;
    }
    make_node(&path, &node, device.path())
}

/// A device node to create.
struct Node {
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// mknod, or when that is not allowed, a bind mount of the agent's own node at `host_path`. An
/// existing file is left as it is.
fn make_node(path: &Path, node: &Node, host_path: &Path) -> anyhow::Result<()> {
    let mode = Mode::from_bits_truncate(node.mode);
    match mknod(path, node.kind, mode, makedev(node.major, node.minor)) {
        Err(nix::errno::Errno::EEXIST) => Ok(()),
        Ok(()) => {
            std::os::unix::fs::chown(path, Some(node.uid), Some(node.gid))?;
            // mknod applies the umask; the spec's mode is exact.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))?;
            Ok(())
        }
        Err(nix::errno::Errno::EPERM) => {
            std::fs::File::create(path)?;
            mount(Some(host_path), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .with_context(|| format!("bind {}", host_path.display()))?;
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}
