//! Cleaning up after a shim that is gone (containerd's `shim delete`): everything is found from
//! disk, nothing from memory.

use std::path::Path;

use slog::{info, warn, Logger};

use crate::config::Config;
use crate::host_cgroup::{pod_cgroup_path, HostCgroup};
use crate::sandbox::{remove_run_dir, run_dir_for};
use crate::{mounts, state};

/// Ends the sandbox's recorded helper processes (if `container_id` is the sandbox itself),
/// unmounts the container's shares and rootfs, and removes the sandbox's state.
pub fn after_dead_shim(
    config: &Config,
    sandbox_id: &str,
    container_id: &str,
    bundle: &Path,
    logger: &Logger,
) {
    let run_dir = run_dir_for(config, sandbox_id);
    if container_id == sandbox_id {
        match state::load(&run_dir) {
            Ok(Some(recorded)) => {
                info!(logger, "ending the processes of a dead sandbox"; "sandbox" => sandbox_id,
                    "processes" => recorded.processes.len());
                bazaar_hypervisor::kill_recorded(&recorded.processes);
            }
            Ok(None) => {}
            Err(err) => warn!(logger, "sandbox state unreadable"; "error" => format!("{err:#}")),
        }
        remove_run_dir(&run_dir, logger);
        remove_pod_cgroup(bundle, logger);
    } else {
        let shared = run_dir.join("shared").join(container_id);
        let result = mounts::unmount_all_under(&shared)
            .and_then(|()| mounts::remove_dir_without_mounts(&shared));
        if let Err(err) = result {
            warn!(logger, "cleaning a container's shares"; "error" => format!("{err:#}"));
        }
    }
    if let Err(err) = mounts::unmount_all_under(&bundle.join("rootfs")) {
        warn!(logger, "unmounting the rootfs"; "error" => format!("{err:#}"));
    }
}

/// Removes the pod's host cgroup (`host_cgroup`) that the dead shim made, now that its VMM is
/// gone; the bundle's spec names it.
fn remove_pod_cgroup(bundle: &Path, logger: &Logger) {
    let spec_path = bundle.join("config.json");
    let Ok(spec) = oci_spec::runtime::Spec::load(&spec_path) else { return };
    let Some(path) = pod_cgroup_path(&spec) else { return };
    if let Err(err) = HostCgroup::at(&path).and_then(|cgroup| cgroup.remove()) {
        warn!(logger, "removing a dead sandbox's host cgroup"; "error" => format!("{err:#}"));
    }
}
