//! What the agent tells its helper (`bazaar-agent __init-container`), as JSON over a pipe.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};

/// The setup of one container process.
#[derive(Debug, Serialize, Deserialize)]
pub struct HelperConfig {
    /// The process to run (for an init: a copy of `spec.process`).
    pub process: Process,
    /// Whether stdio is a terminal (fds 0-2 are then its slave side).
    pub terminal: bool,
    /// `cgroup.procs` of the container's cgroup, joined by the helper before it forks; `None`
    /// when cgroups are not available.
    pub cgroup_procs: Option<PathBuf>,
    pub mode: Mode,
}

/// A new container or a process in an existing one.
#[derive(Debug, Serialize, Deserialize)]
pub enum Mode {
    /// The init process of a new container, which waits for `Start` before it execs.
    Init {
        /// The spec, with root.path and bind mount sources already mapped to this agent's paths.
        spec: Box<Spec>,
        /// The absolute root filesystem path.
        rootfs: PathBuf,
        /// Enter the root with MS_MOVE + chroot instead of pivot_root.
        no_pivot: bool,
    },
    /// A process that joins the namespaces and root of the container whose init has this pid.
    Exec { init_pid: i32 },
}

/// What travels over the config pipe: the config, and the container's seccomp profile (the
/// spec's for an init; for an exec, the one its container was created with, since an exec's
/// process spec has none and runc applies the container's).
#[derive(Debug, Serialize)]
pub struct HelperInputRef<'a> {
    pub config: &'a HelperConfig,
    pub seccomp: Option<&'a LinuxSeccomp>,
}

/// The helper's side of [`HelperInputRef`].
#[derive(Debug, Deserialize)]
pub struct HelperInput {
    pub config: HelperConfig,
    pub seccomp: Option<LinuxSeccomp>,
}
