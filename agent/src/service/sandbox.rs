//! CreateSandbox, DestroySandbox, Check, Version.

use std::time::Duration;

use anyhow::Context;
use bazaar_protocols::agent::health_check_response::ServingStatus;
use bazaar_protocols::agent::{
    CreateSandboxRequest, DestroySandboxRequest, Empty, HealthCheckResponse, VersionResponse,
};
use nix::mount::{mount, MsFlags};
use slog::{info, warn};

use crate::error::{Error, Result};
use crate::state::Agent;

/// How long DestroySandbox waits after its reply before the VM goes away.
const END_DELAY: Duration = Duration::from_millis(50);

/// Mounts the shared filesystem and applies the sandbox-wide settings (guest only: hostname,
/// resolv.conf and the network are the VM's, which a host-mode agent must not touch).
pub async fn create(agent: &Agent, req: &CreateSandboxRequest) -> Result<Empty> {
    if req.sandbox_id.is_empty() {
        return Err(Error::InvalidArgument("sandbox_id must not be empty".to_string()));
    }
    if let Some(existing) = agent.sandbox_id() {
        return Err(Error::FailedPrecondition(format!("sandbox {existing} is already created")));
    }
    let config = &agent.config;
    if config.mount_shared_fs {
        if req.shared_fs_tag.is_empty() {
            return Err(Error::InvalidArgument("shared_fs_tag must not be empty".to_string()));
        }
        std::fs::create_dir_all(&config.shared_dir)
            .with_context(|| format!("mkdir {}", config.shared_dir.display()))?;
        mount(
            Some(req.shared_fs_tag.as_str()),
            &config.shared_dir,
            Some("virtiofs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .with_context(|| {
            format!("mount virtio-fs tag {} on {}", req.shared_fs_tag, config.shared_dir.display())
        })?;
    }
    if config.pid1 {
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).context("sethostname")?;
        }
        if !req.dns.is_empty() {
            let mut content = req.dns.join("\n");
            content.push('\n');
            std::fs::create_dir_all("/etc").context("mkdir /etc")?;
            std::fs::write("/etc/resolv.conf", content).context("write /etc/resolv.conf")?;
        }
        crate::network::configure(&req.interfaces, &req.routes, &req.neighbours, &agent.log)
            .await
            .context("configuring the pod network")?;
    } else if !req.hostname.is_empty() || !req.dns.is_empty() || !req.interfaces.is_empty() {
        info!(agent.log, "host mode: leaving hostname, resolv.conf and the network alone");
    }
    agent.set_sandbox(&req.sandbox_id)?;
    info!(agent.log, "sandbox created"; "sandbox" => &req.sandbox_id,
        "shared_dir" => %config.shared_dir.display());
    Ok(Empty::new())
}

/// Kills every container, syncs, and ends the VM shortly after the reply (a host-mode agent
/// exits instead).
pub async fn destroy(agent: &Agent, req: &DestroySandboxRequest) -> Result<Empty> {
    if let Some(existing) = agent.sandbox_id() {
        if !req.sandbox_id.is_empty() && req.sandbox_id != existing {
            return Err(Error::NotFound(format!(
                "sandbox {} not found (this is {existing})",
                req.sandbox_id
            )));
        }
    }
    info!(agent.log, "destroying the sandbox"; "sandbox" => &req.sandbox_id);
    agent.remove_all_containers().await;
    nix::unistd::sync();
    let pid1 = agent.config.pid1;
    let log = agent.log.clone();
    tokio::spawn(async move {
        tokio::time::sleep(END_DELAY).await;
        if pid1 {
            warn!(log, "ending the VM");
            crate::init::end_vm();
        }
        info!(log, "host mode: exiting");
        std::process::exit(0);
    });
    Ok(Empty::new())
}

pub fn check() -> HealthCheckResponse {
    let mut response = HealthCheckResponse::new();
    response.status = ServingStatus::SERVING.into();
    response
}

pub fn version() -> VersionResponse {
    let mut response = VersionResponse::new();
    response.agent_version = env!("CARGO_PKG_VERSION").to_string();
    response.api_version = bazaar_protocols::AGENT_API_VERSION;
    response.kernel_release = crate::sys::kernel_release().unwrap_or_default();
    response
}
