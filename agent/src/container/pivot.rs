//! Switching the container's mount namespace over to its root filesystem.
//!
//! `pivot_root` is the normal way. It is impossible when the namespace's root is the initramfs
//! (`rootfs`), which is the case in the guest, whose `/init` is the agent: the kernel answers
//! EINVAL. Then the root is moved over `/` (MS_MOVE) and entered with chroot, after lazily
//! unmounting everything else of the agent's tree in this namespace (as runc's `--no-pivot`).
//! The VM is the isolation boundary of the pod, which makes chroot acceptable there.

use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, chroot, pivot_root};

/// Makes `rootfs` (a mount point) the root of this mount namespace and chdirs to `/`.
pub fn switch_root(rootfs: &Path, no_pivot: bool) -> anyhow::Result<()> {
    chdir(rootfs).with_context(|| format!("chdir {}", rootfs.display()))?;
    if !no_pivot {
        match pivot_root(".", ".") {
            Ok(()) => {
                // The old root is stacked under the new one at "."; keep its unmount from
                // propagating anywhere, then detach it.
                mount(
                    None::<&str>,
                    ".",
                    None::<&str>,
                    MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    None::<&str>,
                )
                .context("make the old root a slave")?;
                umount2(".", MntFlags::MNT_DETACH).context("detach the old root")?;
                chdir("/").context("chdir /")?;
                return Ok(());
            }
            Err(Errno::EINVAL) => {} // the namespace root is the initramfs: move instead
            Err(err) => return Err(err).context("pivot_root"),
        }
    }
    move_root(rootfs)
}

fn move_root(rootfs: &Path) -> anyhow::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    let mut others: Vec<PathBuf> = mount_points(&mountinfo)
        .into_iter()
        .filter(|point| !point.starts_with(rootfs) && !rootfs.starts_with(point))
        .collect();
    // Deepest first, so that children go before their parents.
    others.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in others {
        // Already gone with a parent (EINVAL) or busy in some odd way: nothing to do.
        let _ = umount2(&point, MntFlags::MNT_DETACH);
    }
    mount(Some(rootfs), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("move the root over /")?;
    chroot(".").context("chroot")?;
    chdir("/").context("chdir /")?;
    Ok(())
}

/// The mount points listed in `/proc/self/mountinfo` (field 5, octal escapes decoded).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

/// Decodes the `\NNN` octal escapes mountinfo uses for space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        if let (b'\\', Some(digits)) = (bytes[i], digits) {
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(value) = u8::try_from(value) {
                    out.push(value);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remounts `/` read-only (`root.readonly`), keeping its other flags.
pub fn make_root_readonly() -> anyhow::Result<()> {
    let stat = nix::sys::statvfs::statvfs("/").context("statvfs /")?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let current = stat.flags();
    use nix::sys::statvfs::FsFlags;
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>).context("remount / read-only")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_points() {
        let mountinfo = "\
22 1 0:21 / / rw,relatime - rootfs rootfs rw
23 22 0:22 / /proc rw,nosuid - proc proc rw
24 22 0:23 / /run/bazaar/shared rw - virtiofs bazaarfs rw
25 24 0:23 /c1/rootfs /run/bazaar/shared/c1/rootfs rw - virtiofs bazaarfs rw
26 22 0:24 / /mnt/with\\040space rw - tmpfs tmpfs rw
";
        let points = mount_points(mountinfo);
        assert_eq!(
            points,
            vec![
                PathBuf::from("/"),
                PathBuf::from("/proc"),
                PathBuf::from("/run/bazaar/shared"),
                PathBuf::from("/run/bazaar/shared/c1/rootfs"),
                PathBuf::from("/mnt/with space"),
            ]
        );
    }

    #[test]
    fn unescape_leaves_plain_backslashes() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("a\\x"), "a\\x");
        assert_eq!(unescape("end\\04"), "end\\04");
    }
}
