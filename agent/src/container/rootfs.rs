//! Paths inside a container's root filesystem, resolved without ever leaving it.
//!
//! A mount destination such as `/etc/hosts` may cross symlinks planted in the image
//! (`/etc -> /host/etc`, `../../..`). Every component is resolved by hand: `..` stops at the
//! root, and a symlink's target is read and resolved again *inside* the root (an absolute target
//! starts over at the root). The result is a path under the root with no symlink in the part
//! that exists, so the mount goes where the container would see that path.
//!
//! Known limit: the image must not change between the check and the mount (the agent mounts
//! before any container code runs, so only another container sharing the rootfs could).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution may follow (the kernel's own limit is 40).
const MAX_SYMLINKS: usize = 255;

/// Resolves `unsafe_path` as the container would see it, inside `root`.
pub fn resolve_in_root(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<OsString> = components(unsafe_path);
    let mut followed = 0;
    while let Some(part) = pending.pop_front() {
        match part.to_str() {
            Some("" | ".") => continue,
            Some("..") => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for (i, component) in components(&target).into_iter().enumerate() {
                    pending.insert(i, component);
                }
            }
            Ok(_) => resolved = candidate,
            Err(err) if err.kind() == io::ErrorKind::NotFound => resolved = candidate,
            Err(err) => return Err(err),
        }
    }
    Ok(root.join(resolved))
}

/// The components of a path as strings, `..` and `.` included, the root dropped.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir => Some(OsString::from(".")),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Resolves `path` inside `root` and creates it as a directory (with its parents).
pub fn mkdir_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let resolved = resolve_in_root(root, path)?;
    create_dirs(root, &resolved)?;
    Ok(resolved)
}

/// Resolves `path` inside `root` and makes sure a file exists there (for bind mounts of files).
pub fn touch_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let resolved = resolve_in_root(root, path)?;
    if let Some(parent) = resolved.parent() {
        create_dirs(root, parent)?;
    }
    match fs::symlink_metadata(&resolved) {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o644)
                .open(&resolved)?;
        }
        Err(err) => return Err(err),
    }
    Ok(resolved)
}

/// Creates the missing directories of an already resolved path, refusing symlinks (which could
/// only appear if the tree changed under us).
fn create_dirs(root: &Path, resolved: &Path) -> io::Result<()> {
    let relative = resolved.strip_prefix(root).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "resolved path escaped the root")
    })?;
    let mut current = root.to_path_buf();
    for component in relative.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} became a symlink", current.display()),
                ))
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", current.display()),
                ))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                use std::os::unix::fs::DirBuilderExt;
                match fs::DirBuilder::new().mode(0o755).create(&current) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch directory removed on drop (no tempfile crate in the workspace).
    pub struct Scratch(pub PathBuf);

    impl Scratch {
        pub fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("bazaar-agent-test-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn plain_paths_join_the_root() {
        let root = Path::new("/nonexistent-root");
        assert_eq!(resolve_in_root(root, Path::new("/etc/hosts")).unwrap(), root.join("etc/hosts"));
        assert_eq!(
            resolve_in_root(root, Path::new("etc/./hosts")).unwrap(),
            root.join("etc/hosts")
        );
    }

    #[test]
    fn dotdot_stops_at_the_root() {
        let root = Path::new("/nonexistent-root");
        assert_eq!(resolve_in_root(root, Path::new("/../../etc")).unwrap(), root.join("etc"));
        assert_eq!(resolve_in_root(root, Path::new("/a/b/../../../c")).unwrap(), root.join("c"));
    }

    #[test]
    fn absolute_symlinks_are_rerooted() {
        let scratch = Scratch::new("abs-symlink");
        let root = &scratch.0;
        fs::create_dir_all(root.join("real/etc")).unwrap();
        symlink("/real/etc", root.join("etc")).unwrap();
        symlink("/", root.join("escape")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/etc/hosts")).unwrap(),
            root.join("real/etc/hosts")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/escape/etc/x")).unwrap(),
            root.join("real/etc/x")
        );
    }

    #[test]
    fn relative_symlinks_cannot_climb_out() {
        let scratch = Scratch::new("rel-symlink");
        let root = &scratch.0;
        fs::create_dir_all(root.join("a")).unwrap();
        symlink("../../../../../../tmp", root.join("a/up")).unwrap();
        symlink("sibling", root.join("a/link")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("/a/up/x")).unwrap(), root.join("tmp/x"));
        assert_eq!(resolve_in_root(root, Path::new("/a/link")).unwrap(), root.join("a/sibling"));
    }

    #[test]
    fn symlink_loops_fail() {
        let scratch = Scratch::new("loop");
        let root = &scratch.0;
        symlink("/b", root.join("a")).unwrap();
        symlink("/a", root.join("b")).unwrap();
        let err = resolve_in_root(root, Path::new("/a")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn mkdir_and_touch_stay_inside() {
        let scratch = Scratch::new("mkdir");
        let root = &scratch.0;
        symlink("/", root.join("escape")).unwrap();
        let dir = mkdir_in_root(root, Path::new("/escape/x/y")).unwrap();
        assert_eq!(dir, root.join("x/y"));
        assert!(dir.is_dir());
        let file = touch_in_root(root, Path::new("/escape/etc/hosts")).unwrap();
        assert_eq!(file, root.join("etc/hosts"));
        assert!(file.is_file());
    }
}
