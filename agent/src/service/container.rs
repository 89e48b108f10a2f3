//! CreateContainer, StartContainer, RemoveContainer, Pause/ResumeContainer, UpdateContainer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bazaar_protocols::agent::{
    CreateContainerRequest, Empty, RemoveContainerRequest, StartContainerRequest,
    StartContainerResponse, UpdateContainerRequest,
};
use oci_spec::runtime::{LinuxResources, Mount, Spec};
use slog::{info, warn, Logger};

use crate::container::cgroups::{self, Cgroup};
use crate::container::config::{HelperConfig, Mode};
use crate::container::{namespaces, spawn};
use crate::error::{Error, Result};
use crate::state::{Agent, Container, Process};
use crate::stdio::ProcessIo;

/// Creates the container's init, set up and waiting for StartContainer.
pub async fn create(agent: &Agent, req: &CreateContainerRequest) -> Result<Empty> {
    let id = req.container_id.as_str();
    validate_id(id)?;
    if agent.sandbox_id().is_none() {
        return Err(Error::FailedPrecondition(
            "CreateSandbox must come before CreateContainer".to_string(),
        ));
    }
    let _reservation = agent.reserve(id)?;
    let log = agent.log.new(slog::o!("container" => id.to_string()));

    let mut spec: Spec = serde_json::from_slice(&req.oci_spec_json)
        .map_err(|err| Error::InvalidArgument(format!("invalid OCI spec: {err}")))?;
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| Error::InvalidArgument("the OCI spec has no process".to_string()))?;
    let rootfs = rootfs_path(agent, id, &spec)?;
    map_bind_sources(agent, &mut spec);
    note_unsupported(&log, &spec)?;

    let cgroup = create_cgroup(agent, id, &spec, &log)?;
    let result = spawn_init(agent, spec, process, rootfs, cgroup.as_ref(), req, &log).await;
    let (init, sync) = match result {
        Ok(spawned) => spawned,
        Err(err) => {
            if let Some(cgroup) = &cgroup {
                let _ = cgroup.kill_all();
                let _ = cgroup.remove().await;
            }
            return Err(err);
        }
    };
    info!(log, "container created"; "pid" => init.pid());
    if let Some(cgroup) = &cgroup {
        // Without the memory controller there is no memory.events and no OOM to report.
        if let Err(err) = agent.oom.watch(id, cgroup.path()) {
            warn!(log, "OOM events unavailable for this container"; "error" => format!("{err:#}"));
        }
    }
    agent.insert(Arc::new(Container::new(id.to_string(), cgroup, init, sync)));
    Ok(Empty::new())
}

async fn spawn_init(
    agent: &Agent,
    spec: Spec,
    process: oci_spec::runtime::Process,
    rootfs: PathBuf,
    cgroup: Option<&Cgroup>,
    req: &CreateContainerRequest,
    log: &Logger,
) -> Result<(Process, crate::container::sync::AsyncSyncSocket)> {
    let (pending_io, child_stdio) = ProcessIo::create(req.terminal, req.stdin)?;
    let config = HelperConfig {
        process,
        terminal: req.terminal,
        cgroup_procs: cgroup.map(Cgroup::procs_file),
        mode: Mode::Init { spec: Box::new(spec), rootfs, no_pivot: agent.config.no_pivot },
    };
    let mut spawned = spawn::spawn(&agent.reaper, &config, child_stdio, log).await?;
    let io = pending_io.finish(spawned.console.take())?;
    let sync = spawned
        .sync
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("the init's sync socket is missing")))?;
    Ok((Process::new(String::new(), spawned.watched, io), sync))
}

/// Lets the init exec the container's program.
pub async fn start(agent: &Agent, req: &StartContainerRequest) -> Result<StartContainerResponse> {
    let container = agent.container(&req.container_id)?;
    let pid = container.start().await?;
    info!(agent.log, "container started"; "container" => &req.container_id, "pid" => pid);
    let mut response = StartContainerResponse::new();
    response.pid = pid as u32;
    Ok(response)
}

/// Kills what is left of the container and forgets it.
pub async fn remove(agent: &Agent, req: &RemoveContainerRequest) -> Result<Empty> {
    let container = agent.container(&req.container_id)?;
    agent.oom.unwatch(&req.container_id);
    container.destroy(&agent.log).await?;
    agent.forget(&req.container_id);
    info!(agent.log, "container removed"; "container" => &req.container_id);
    Ok(Empty::new())
}

pub async fn set_paused(agent: &Agent, id: &str, paused: bool) -> Result<Empty> {
    agent.container(id)?.set_paused(paused).await?;
    Ok(Empty::new())
}

/// Applies new resource limits (OCI LinuxResources JSON).
pub fn update(agent: &Agent, req: &UpdateContainerRequest) -> Result<Empty> {
    let container = agent.container(&req.container_id)?;
    let resources: LinuxResources = serde_json::from_slice(&req.oci_resources_json)
        .map_err(|err| Error::InvalidArgument(format!("invalid OCI resources: {err}")))?;
    let skipped = container.require_cgroup()?.apply(&resources)?;
    if !skipped.is_empty() {
        warn!(agent.log, "resources skipped (controller not available)";
            "container" => &req.container_id, "files" => skipped.join(","));
    }
    Ok(Empty::new())
}

/// Container ids become cgroup and directory names: keep them to a safe alphabet.
fn validate_id(id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id.len() <= 256
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid container id {id:?}: use letters, digits, '_', '-' and '.' (not first)"
        )))
    }
}

/// The rootfs as an absolute path of this agent: root.path mapped into the shared directory; a
/// relative root.path is taken relative to `<shared>/<container-id>/`.
fn rootfs_path(agent: &Agent, id: &str, spec: &Spec) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("the OCI spec has no root".to_string()))?;
    let path = root.path();
    if path.as_os_str().is_empty() {
        return Err(Error::InvalidArgument("root.path must not be empty".to_string()));
    }
    Ok(if path.is_absolute() {
        agent.config.map_shared_path(path)
    } else {
        agent.config.shared_dir.join(id).join(path)
    })
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount.options().iter().flatten().any(|option| option == "bind" || option == "rbind")
}

/// Maps the source of every bind mount into the shared directory (a no-op in the guest).
fn map_bind_sources(agent: &Agent, spec: &mut Spec) {
    let Some(mut mounts) = spec.mounts().clone() else { return };
    for mount in mounts.iter_mut().filter(|mount| is_bind(mount)) {
        if let Some(source) = mount.source().as_deref().filter(|source| source.is_absolute()) {
            let mapped = agent.config.map_shared_path(source);
            mount.set_source(Some(mapped));
        }
    }
    spec.set_mounts(Some(mounts));
}

/// Logs the settings the agent does not apply (OCI hooks, which run on the host: see
/// docs/oci-fidelity.md), and the namespaces left shared with the VM.
fn note_unsupported(log: &Logger, spec: &Spec) -> Result<()> {
    if let Some(linux) = spec.linux() {
        let namespaces = linux.namespaces().clone().unwrap_or_default();
        let (_, shared) = namespaces::unshare_plan(&namespaces).map_err(Error::Setup)?;
        if !shared.is_empty() {
            info!(log, "namespaces shared with the VM"; "types" => format!("{shared:?}"));
        }
    }
    if spec.hooks().is_some() {
        warn!(log, "OCI hooks are not run by the bazaar agent");
    }
    Ok(())
}

/// Creates the container's cgroup and applies the spec's resources; `None` without cgroup v2.
fn create_cgroup(agent: &Agent, id: &str, spec: &Spec, log: &Logger) -> Result<Option<Cgroup>> {
    let Some(root) = agent.cgroup_root() else {
        warn!(log, "no cgroup v2 hierarchy: the container gets no cgroup";
            "cgroup_root" => %agent.config.cgroup_root.display());
        return Ok(None);
    };
    let linux = spec.linux().as_ref();
    let cgroups_path = linux.and_then(|linux| linux.cgroups_path().as_deref());
    let relative = cgroups::relative_path(id, cgroups_path.map(Path::new))?;
    let cgroup = root.create(&relative)?;
    if let Some(resources) = linux.and_then(|linux| linux.resources().as_ref()) {
        match cgroup.apply(resources) {
            Ok(skipped) if !skipped.is_empty() => {
                warn!(log, "resources skipped (controller not available)"; "files" => skipped.join(","));
            }
            Ok(_) => {}
            Err(err) => {
                let _ = std::fs::remove_dir(cgroup.path());
                return Err(err);
            }
        }
    }
    Ok(Some(cgroup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert!(validate_id("c1").is_ok());
        assert!(validate_id("abc_DEF-1.2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", ".hidden"] {
            assert!(validate_id(bad).is_err(), "{bad:?} should be invalid");
        }
    }
}
