//! A temp directory with a short, unique path, removed on drop.
//!
//! Paths stay short because unix socket paths (containerd's, the shim's) must fit in 108 bytes.
//! The random part of the name doubles as the test's identity token: container ids and every
//! file the test creates carry it, which is how [`crate::leaks`] tells our leftovers from
//! other people's processes on a shared machine.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `/tmp/<prefix>-XXXXXX`.
    pub fn new(prefix: &str) -> Result<Self> {
        let template = CString::new(format!("/tmp/{prefix}-XXXXXX"))?;
        let raw = template.into_raw();
        // SAFETY: `raw` is a NUL-terminated buffer we own, ending in "XXXXXX" as mkdtemp requires;
        // mkdtemp rewrites those bytes in place and does not keep the pointer.
        let result = unsafe { libc::mkdtemp(raw) };
        // SAFETY: `raw` came from `CString::into_raw` above and is reclaimed exactly once.
        let template = unsafe { CString::from_raw(raw) };
        if result.is_null() {
            return Err(std::io::Error::last_os_error()).context("mkdtemp in /tmp");
        }
        let path = PathBuf::from(OsString::from_vec(template.into_bytes()));
        Ok(TempDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The unique token of this directory: its file name, e.g. `bzt-a1B2c3`.
    pub fn token(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Leaves the directory in place on drop (for debugging a failed run).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Removes the directory now, reporting why not.
    pub fn remove(&mut self) -> Result<()> {
        if self.keep || !self.path.exists() {
            return Ok(());
        }
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            bail!("cannot remove temp dir {}: {err}", self.path.display());
        }
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            eprintln!("bazaar-tests: {err:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_unique_dirs_and_removes_them() {
        let a = TempDir::new("bzt-unit").unwrap();
        let b = TempDir::new("bzt-unit").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir());
        assert!(a.token().starts_with("bzt-unit-"));
        std::fs::write(a.path().join("f"), "x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
    }
}
