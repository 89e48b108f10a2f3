//! Creating container processes from OCI specs.
//!
//! Agent side: [`spawn`] (start the helper, follow the setup) and [`cgroups`] (with the device
//! allowlist, [`device_filter`]).
//! Helper side: [`launcher`] (forks helpers), [`helper`] (namespaces, fork) and, in the container process, [`setup`] with its
//! parts: [`mounts`], [`rootfs`] (safe paths), [`devices`], [`pivot`], [`masks`], [`process`]
//! ([`user`], [`caps`], [`seccomp`], [`exec`]). Raw system calls of these parts: [`kernel`].

pub mod caps;
pub mod cgroups;
pub mod config;
pub mod device_filter;
pub mod devices;
pub mod exec;
pub mod helper;
pub mod kernel;
pub mod launcher;
pub mod masks;
pub mod mounts;
pub mod namespaces;
pub mod pivot;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod setup;
pub mod spawn;
pub mod sync;
pub mod user;

/// The hidden subcommand that runs [`helper::main`].
pub const HELPER_SUBCOMMAND: &str = "__init-container";
