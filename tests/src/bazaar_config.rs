//! Writing the Bazaar configuration file (`configuration.toml`) a test's shim reads.
//!
//! containerd passes its environment to the shims it starts, so a test points the shim at its
//! own file by starting its private containerd with `BAZAAR_CONFIG=<file>`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The environment variable the shim reads the configuration path from.
pub const CONFIG_ENV: &str = "BAZAAR_CONFIG";

/// The settings a test cares about; everything else keeps the shim's defaults.
#[derive(Debug, Clone)]
pub struct BazaarConfig {
    /// `auto`, `qemu` or `builtin` (or anything, to test the error).
    pub hypervisor: String,
    pub acceleration: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub log_level: String,
}

/// Overrides the hypervisor the tests ask for (default `qemu`).
pub const HYPERVISOR_ENV: &str = "BAZAAR_TEST_HYPERVISOR";
/// Overrides the acceleration the tests ask for (default `auto`).
pub const ACCELERATION_ENV: &str = "BAZAAR_TEST_ACCELERATION";

impl BazaarConfig {
    /// The configuration e2e tests run with: the guest kernel and initrd built in this tree.
    pub fn for_tests() -> Self {
        BazaarConfig {
            hypervisor: std::env::var(HYPERVISOR_ENV).unwrap_or_else(|_| "qemu".into()),
            acceleration: std::env::var(ACCELERATION_ENV).unwrap_or_else(|_| "auto".into()),
            kernel: crate::paths::guest_kernel(),
            initrd: crate::paths::guest_initrd(),
            vcpus: 1,
            memory_mib: 256,
            log_level: "debug".into(),
        }
    }

    pub fn to_toml(&self) -> String {
        format!(
            "# Written by bazaar-tests.\n\
             [hypervisor]\n\
             name = {}\n\
             acceleration = {}\n\
             kernel = {}\n\
             initrd = {}\n\
             vcpus = {}\n\
             memory_mib = {}\n\
             \n\
             [log]\n\
             level = {}\n",
            quote(&self.hypervisor),
            quote(&self.acceleration),
            quote(&self.kernel.to_string_lossy()),
            quote(&self.initrd.to_string_lossy()),
            self.vcpus,
            self.memory_mib,
            quote(&self.log_level),
        )
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_raw(path, &self.to_toml())
    }
}

/// Writes arbitrary text as the configuration (for the invalid-input tests).
pub fn write_raw(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_key() {
        let cfg = BazaarConfig {
            hypervisor: "qemu".into(),
            acceleration: "tcg".into(),
            kernel: "/k/bz\"Image".into(),
            initrd: "/i/initrd.cpio".into(),
            vcpus: 2,
            memory_mib: 512,
            log_level: "info".into(),
        };
        let text = cfg.to_toml();
        assert!(text.contains("[hypervisor]\nname = \"qemu\"\n"));
        assert!(text.contains("acceleration = \"tcg\"\n"));
        assert!(text.contains("kernel = \"/k/bz\\\"Image\"\n"));
        assert!(text.contains("vcpus = 2\nmemory_mib = 512\n"));
        assert!(text.contains("[log]\nlevel = \"info\"\n"));
    }
}
