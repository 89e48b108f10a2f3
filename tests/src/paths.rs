//! Where the artefacts under test are: the built shim, the guest kernel and initrd.
//!
//! The shim is taken from the same cargo profile directory as the running test binary
//! (`target/release/` under `cargo test --release`), so the tests always exercise what was just
//! built. Environment variables override each path for runs against other builds: `make test`
//! points `BAZAAR_TEST_SHIM_DIR` at `target/shim/`, the shim profile's build that `make install`
//! installs.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

/// The shim binary containerd looks up on its `PATH` for `io.containerd.bazaar.v2`.
pub const SHIM_BINARY: &str = "containerd-shim-bazaar-v2";
/// Overrides the directory holding the shim (and its helper binaries).
pub const SHIM_DIR_ENV: &str = "BAZAAR_TEST_SHIM_DIR";
/// Overrides the guest kernel used by the tests.
pub const KERNEL_ENV: &str = "BAZAAR_TEST_KERNEL";
/// Overrides the guest initrd used by the tests.
pub const INITRD_ENV: &str = "BAZAAR_TEST_INITRD";

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The cargo profile directory of the running binary: `target/<profile>`.
///
/// Test binaries live in `target/<profile>/deps/`, binaries in `target/<profile>/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir
    }
}

/// The cargo profile name (`release`, `debug`) of the running binary.
pub fn profile_name() -> String {
    profile_dir().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A directory under `target/` for test artefacts kept after a run (containerd logs).
pub fn artefact_dir() -> PathBuf {
    let profile = profile_dir();
    let target = profile.parent().unwrap_or(&profile);
    target.join("tmp").join("bazaar-e2e")
}

/// The directory holding the shim binary to test.
pub fn shim_dir() -> PathBuf {
    std::env::var_os(SHIM_DIR_ENV).map(PathBuf::from).unwrap_or_else(profile_dir)
}

/// The guest kernel built by `make guest-image`.
pub fn guest_kernel() -> PathBuf {
    std::env::var_os(KERNEL_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest/bzImage"))
}

/// The guest initrd built by `make guest-image`.
pub fn guest_initrd() -> PathBuf {
    std::env::var_os(INITRD_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest/initrd.cpio"))
}

/// Checks that everything a Bazaar e2e test needs has been built, and says what to build if not.
/// `guest`: the test boots the guest built in this tree (not a bad-input test).
pub fn require_bazaar_artefacts(guest: bool) -> Result<()> {
    let mut missing = Vec::new();
    let shim = shim_dir().join(SHIM_BINARY);
    if !shim.is_file() {
        let flag = if profile_name() == "release" { " --release" } else { "" };
        missing.push(format!(
            "the shim {} (build it with `cargo build{flag} --workspace`, or `make build`)",
            shim.display()
        ));
    }
    for (what, path) in [("guest kernel", guest_kernel()), ("guest initrd", guest_initrd())] {
        if guest && !path.is_file() {
            missing
                .push(format!("the {what} {} (build it with `make guest-image`)", path.display()));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "Bazaar e2e test cannot run, missing: {}. `make test` builds all of these first.",
            missing.join("; ")
        ))
    }
}
