//! `linux.maskedPaths` and `linux.readonlyPaths`, applied after the root switch.

use std::io;

use anyhow::Context;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// Hides each path: `/dev/null` over files, an empty read-only tmpfs over directories. Paths
/// that do not exist are skipped.
pub fn mask(paths: &[String]) -> anyhow::Result<()> {
    for path in paths {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("stat masked path {path}")),
        };
        let result = if meta.is_dir() {
            mount(Some("tmpfs"), path.as_str(), Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>)
        } else {
            mount(Some("/dev/null"), path.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
        };
        result.with_context(|| format!("mask {path}"))?;
    }
    Ok(())
}

/// Makes each path read-only with a bind mount onto itself. Paths that do not exist are skipped.
pub fn make_readonly(paths: &[String]) -> anyhow::Result<()> {
    for path in paths {
        let bind = mount(
            Some(path.as_str()),
            path.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        );
        match bind {
            Ok(()) => {}
            Err(Errno::ENOENT) => continue,
            Err(err) => return Err(err).with_context(|| format!("bind readonly path {path}")),
        }
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_REC;
        mount(None::<&str>, path.as_str(), None::<&str>, flags, None::<&str>)
            .with_context(|| format!("remount readonly path {path} read-only"))?;
    }
    Ok(())
}
