//! Host-side mounts: the container rootfs containerd hands over, and its bind into the directory
//! shared with the guest over virtio-fs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One mount from containerd's CreateTaskRequest.rootfs.
#[derive(Debug, Clone)]
pub struct RootfsMount {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mounts the snapshot containerd prepared (normally one overlay mount) at `target`.
pub fn mount_rootfs(mounts: &[RootfsMount], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target)
        .with_context(|| format!("creating rootfs mount point {}", target.display()))?;
    for m in mounts {
        containerd_shim_mount(m, target).with_context(|| {
            format!("mounting {} rootfs {} at {}", m.fs_type, m.source, target.display())
        })?;
    }
    Ok(())
}

fn containerd_shim_mount(m: &RootfsMount, target: &Path) -> Result<()> {
    // containerd's mount options are fstab-style strings mixing flags ("ro", "rbind") and data
    // ("lowerdir=..."); the containerd-shim crate already translates them, including the
    // lowerdir compaction overlay needs for images with many layers.
    containerd_shim::mount::mount_rootfs(
        Some(m.fs_type.as_str()),
        Some(m.source.as_str()),
        &m.options,
        target,
    )
    .map_err(|err| anyhow::anyhow!("{err}"))
}

/// Bind-mounts `source` (a directory or a file) onto `target`, creating `target` to match.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<()> {
    let meta = std::fs::metadata(source)
        .with_context(|| format!("bind mount source {} does not exist", source.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating {}", target.display()))?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)
            .with_context(|| format!("creating {}", target.display()))?;
    }
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("bind mounting {} on {}", source.display(), target.display()))?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("making {} read-only", target.display()))?;
    }
    Ok(())
}

/// Unmounts every mount at or below `path`, deepest first. Missing paths are fine.
pub fn unmount_all_under(path: &Path) -> Result<()> {
    let mut targets = mounts_under(path)?;
    // Deepest first; a path mounted several times appears several times and is unmounted as
    // often.
    targets.sort_by_key(|t| std::cmp::Reverse(t.as_os_str().len()));
    for target in targets {
        match umount2(&target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("unmounting {}", target.display()))
            }
        }
    }
    Ok(())
}

/// Removes `dir` recursively, but only when nothing is mounted below it any more: deleting
/// through a still-mounted container rootfs would delete the image's files.
pub fn remove_dir_without_mounts(dir: &Path) -> Result<()> {
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        anyhow::bail!(
            "not removing {}: still mounted below it: {}",
            dir.display(),
            left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Mount points at or below `path`, from /proc/self/mountinfo.
pub fn mounts_under(path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    Ok(parse_mount_points(&text).into_iter().filter(|point| point.starts_with(path)).collect())
}

/// Mount points (field 5) of mountinfo text, with the kernel's octal escapes decoded.
fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_octal(escaped)))
        .collect()
}

fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4);
        match escape {
            Some(digits)
                if bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)) =>
            {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_parsed_and_unescaped() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /run/bazaar/x/shared/c/rootfs rw - overlay overlay rw\n";
        let points = parse_mount_points(text);
        assert_eq!(
            points,
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/run/bazaar/x/shared/c/rootfs")]
        );
    }

    #[test]
    fn trailing_backslash_is_kept() {
        assert_eq!(unescape_octal("a\\"), "a\\");
        assert_eq!(unescape_octal("a\\04"), "a\\04");
    }
}
