//! One sandbox: its VM, the directory shared with the guest, and the agent connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bazaar_hypervisor::builtin::{Builtin, BuiltinPaths};
use bazaar_hypervisor::hybrid_vsock::ReadyListener;
use bazaar_hypervisor::probe::{auto_picks_builtin, HostFacts};
use bazaar_hypervisor::qemu::{Qemu, QemuPaths};
use bazaar_hypervisor::{Device, Hypervisor, NetworkDevice, VmConfig};
use bazaar_protocols::agent::{CreateSandboxRequest, DestroySandboxRequest};
use bazaar_protocols::agent_ttrpc::AgentServiceClient;
use bazaar_protocols::AGENT_READY_PORT;
use slog::{info, warn, Logger};
use tokio::sync::Mutex;

use crate::agent_client::{self, deadline, CONTROL_CALL_TIMEOUT};
use crate::config::{Config, HypervisorKind};
use crate::error::Error;
use crate::host_cgroup::HostCgroup;
use crate::network::PodNetwork;
use crate::{mounts, state};

/// virtio-fs tag of the share carrying root filesystems and bind mounts.
pub const SHARED_FS_TAG: &str = "bazaarfs";

/// The per-sandbox directory under the configured run dir.
pub fn run_dir_for(config: &Config, sandbox_id: &str) -> PathBuf {
    config.runtime.run_dir.join(sandbox_id)
}

/// What the first container decides about its sandbox.
#[derive(Debug, Clone, Copy)]
pub struct StartOptions<'a> {
    /// The guest's hostname.
    pub hostname: &'a str,
    /// The host network namespace whose interfaces the VM takes over.
    pub netns: Option<&'a Path>,
    /// The host cgroup the VMM joins.
    pub host_cgroup: Option<&'a str>,
}

pub struct Sandbox {
    pub id: String,
    pub run_dir: PathBuf,
    /// Host directory shared with the guest; the agent mounts it at `GUEST_SHARED_DIR`.
    pub shared_dir: PathBuf,
    pub agent: AgentServiceClient,
    /// The VMM's host pid: what OCI hooks are told as the container's pid (see `hooks`).
    pub vmm_pid: u32,
    hypervisor: Mutex<Box<dyn Hypervisor>>,
    /// The pod network carried into the VM, if the first container joined one.
    network: Mutex<Option<PodNetwork>>,
    /// Serves CRI's PortForward into the guest (pods with a network namespace only).
    port_forward: Option<tokio::task::JoinHandle<()>>,
    /// The pod's cgroup on the host holding the VMM (CRI pods only, see `host_cgroup`).
    host_cgroup: Option<HostCgroup>,
    logger: Logger,
}

impl Sandbox {
    /// Boots the sandbox VM and waits until its agent serves. On failure everything started so
    /// far is stopped and removed again.
    /// `options.hostname` becomes the guest's hostname, which containers without a UTS
    /// namespace of their own, or without a hostname in their spec, see. `options.netns`: the
    /// host network namespace the first container joins (CNI's, for a pod), whose interfaces
    /// the VM takes over. `options.host_cgroup`: the host cgroup the VMM is moved into (a CRI
    /// pod's pause container's `linux.cgroupsPath`).
    pub async fn start(
        id: &str,
        options: &StartOptions<'_>,
        config: &Config,
        logger: &Logger,
    ) -> Result<Sandbox, Error> {
        check_guest_files(config)?;
        let run_dir = run_dir_for(config, id);
        let logger = logger.new(slog::o!("sandbox" => id.to_string()));
        prepare_run_dir(&run_dir)?;
        let shared_dir = run_dir.join("shared");
        std::fs::create_dir_all(&shared_dir)
            .with_context(|| format!("creating {}", shared_dir.display()))?;

        let mut hypervisor = match new_hypervisor(id, config, &run_dir, &logger) {
            Ok(hv) => hv,
            Err(err) => {
                remove_run_dir(&run_dir, &logger);
                return Err(err);
            }
        };
        let StartOptions { hostname, netns, host_cgroup } = *options;
        let mut network = match netns {
            Some(netns) => match PodNetwork::attach(netns).await {
                Ok(network) => Some(network),
                Err(err) => {
                    remove_run_dir(&run_dir, &logger);
                    return Err(Error::FailedPrecondition(format!("{err:#}")));
                }
            },
            None => None,
        };
        let vm = Vm { id, hostname, config, run_dir: &run_dir, shared_dir: &shared_dir };
        match boot(&vm, network.as_ref(), hypervisor.as_mut(), &logger).await {
            Ok(agent) => {
                let port_forward = network
                    .as_mut()
                    .and_then(|n| n.start_port_forward(hypervisor.agent_socket(), &logger));
                let vmm_pid = hypervisor.vmm_pid().unwrap_or(0);
                let host_cgroup =
                    host_cgroup.and_then(|path| join_host_cgroup(path, vmm_pid, &logger));
                Ok(Sandbox {
                    id: id.to_string(),
                    run_dir,
                    shared_dir,
                    agent,
                    vmm_pid,
                    hypervisor: Mutex::new(hypervisor),
                    network: Mutex::new(network),
                    port_forward,
                    host_cgroup,
                    logger,
                })
            }
            Err(err) => {
                if let Err(stop_err) = hypervisor.stop().await {
                    warn!(logger, "stopping the VM after a failed start"; "error" => format!("{stop_err:#}"));
                }
                detach_network(network, &logger).await;
                remove_run_dir(&run_dir, &logger);
                Err(err)
            }
        }
    }

    /// Shuts the guest down and ends the VM and its helpers; removes the run dir.
    pub async fn stop(&self) {
        let mut request = DestroySandboxRequest::new();
        request.sandbox_id = self.id.clone();
        // Best effort: the VM is ended below whatever the guest answers.
        if let Err(err) =
            self.agent.destroy_sandbox(deadline(Duration::from_secs(2)), &request).await
        {
            warn!(self.logger, "guest did not confirm shutdown"; "error" => %err);
        }
        if let Err(err) = self.hypervisor.lock().await.stop().await {
            warn!(self.logger, "stopping the VM failed"; "error" => format!("{err:#}"));
        }
        if let Some(task) = &self.port_forward {
            task.abort();
        }
        detach_network(self.network.lock().await.take(), &self.logger).await;
        if let Some(cgroup) = self.host_cgroup.clone() {
            // It may wait for the VMM's exit to settle: off the async workers.
            match tokio::task::spawn_blocking(move || cgroup.remove()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    warn!(self.logger, "the pod's host cgroup"; "error" => format!("{err:#}"))
                }
                Err(err) => warn!(self.logger, "removing the pod's host cgroup"; "error" => %err),
            }
        }
        remove_run_dir(&self.run_dir, &self.logger);
        info!(self.logger, "sandbox stopped");
    }
}

/// Creates the pod's host cgroup and moves the VMM into it. The pod runs without it (its host
/// figures are then missing, not wrong) when the host's cgroups cannot be written.
fn join_host_cgroup(path: &str, vmm_pid: u32, logger: &Logger) -> Option<HostCgroup> {
    let cgroup = match HostCgroup::create(path) {
        Ok(cgroup) => cgroup,
        Err(err) => {
            warn!(logger, "the pod's host cgroup"; "error" => format!("{err:#}"));
            return None;
        }
    };
    if let Err(err) = cgroup.add(vmm_pid) {
        warn!(logger, "the pod's host cgroup"; "error" => format!("{err:#}"));
    }
    Some(cgroup)
}

fn check_guest_files(config: &Config) -> Result<(), Error> {
    for (what, path) in
        [("kernel", &config.hypervisor.kernel), ("initrd", &config.hypervisor.initrd)]
    {
        if !path.is_file() {
            return Err(Error::FailedPrecondition(format!(
                "guest {what} {} does not exist (set hypervisor.{what} in {})",
                path.display(),
                crate::config::Config::path_from_env().display()
            )));
        }
    }
    Ok(())
}

fn new_hypervisor(
    id: &str,
    config: &Config,
    run_dir: &Path,
    logger: &Logger,
) -> Result<Box<dyn Hypervisor>, Error> {
    let hv = &config.hypervisor;
    let builtin = match hv.name {
        HypervisorKind::Builtin => {
            info!(logger, "hypervisor selected"; "hypervisor" => "builtin", "reason" => "configured");
            true
        }
        HypervisorKind::Auto => {
            let host = HostFacts::probe();
            let (builtin, mut reason) = auto_picks_builtin(hv.acceleration, &host);
            // A host set up without `make install`'s VMM still runs sandboxes, on QEMU.
            let builtin = builtin && {
                let installed = hv.vmm_path.is_file();
                if !installed {
                    reason = format!(
                        "auto: QEMU, since the built-in VMM {} is not installed",
                        hv.vmm_path.display()
                    );
                }
                installed
            };
            let name = if builtin { "builtin" } else { "qemu" };
            info!(logger, "hypervisor selected"; "hypervisor" => name, "reason" => reason);
            builtin
        }
        HypervisorKind::Qemu => {
            info!(logger, "hypervisor selected"; "hypervisor" => "qemu", "reason" => "configured");
            false
        }
    };
    let vm = VmConfig {
        sandbox_id: id.to_string(),
        vcpus: hv.vcpus,
        memory_mib: hv.memory_mib,
        kernel: hv.kernel.clone(),
        initrd: hv.initrd.clone(),
        extra_kernel_params: hv.kernel_params.clone(),
        run_dir: run_dir.to_path_buf(),
        acceleration: hv.acceleration,
        tcg_cache_mib: hv.tcg_cache_mib,
    };
    if builtin {
        let paths = BuiltinPaths { vmm: hv.vmm_path.clone(), virtiofsd: hv.virtiofsd_path.clone() };
        let vmm = Builtin::new(vm, paths, logger.clone()).map_err(Error::from)?;
        return Ok(Box::new(vmm));
    }
    let paths = QemuPaths {
        qemu: hv.qemu_path.clone(),
        virtiofsd: hv.virtiofsd_path.clone(),
        vhost_vsock: hv.vhost_vsock_path.clone(),
    };
    let qemu = Qemu::new(vm, paths, logger.clone()).map_err(Error::from)?;
    Ok(Box::new(qemu))
}

/// What `boot` starts.
struct Vm<'a> {
    id: &'a str,
    hostname: &'a str,
    config: &'a Config,
    run_dir: &'a Path,
    shared_dir: &'a Path,
}

async fn detach_network(network: Option<PodNetwork>, logger: &Logger) {
    if let Some(network) = network {
        if let Err(err) = network.detach().await {
            warn!(logger, "detaching the pod network"; "error" => format!("{err:#}"));
        }
    }
}

async fn boot(
    vm: &Vm<'_>,
    network: Option<&PodNetwork>,
    hypervisor: &mut dyn Hypervisor,
    logger: &Logger,
) -> Result<AgentServiceClient, Error> {
    let Vm { id, hostname, config, run_dir, shared_dir } = *vm;
    hypervisor.add_device(Device::SharedFs {
        tag: SHARED_FS_TAG.to_string(),
        host_dir: shared_dir.to_path_buf(),
    })?;
    for interface in network.iter().flat_map(|n| &n.interfaces) {
        hypervisor.add_device(Device::Network(NetworkDevice {
            tap: interface.tap.clone(),
            mac: interface.spec.mac.clone(),
        }))?;
    }
    // Bound before the VM starts: the agent connects to it as soon as it serves.
    let ready = ReadyListener::bind(&hypervisor.agent_socket(), AGENT_READY_PORT)
        .context("listening for the guest agent's ready connection")?;
    let started = std::time::Instant::now();
    hypervisor.start().await.context("starting the sandbox VM")?;
    state::save(
        run_dir,
        &state::SandboxState {
            sandbox_id: id.to_string(),
            hypervisor: hypervisor.name().to_string(),
            processes: hypervisor.processes(),
        },
    )?;
    info!(logger, "VM started"; "hypervisor" => hypervisor.name(),
        "elapsed_ms" => started.elapsed().as_millis() as u64);

    let timeout = Duration::from_secs(config.runtime.agent_timeout_secs);
    // A VM that ends while booting (a bad kernel, a guest panic) fails now, not at the timeout.
    let mut exit = hypervisor.exit_receiver();
    tokio::select! {
        result = ready.wait(timeout) => result.context("guest agent did not come up")?,
        Ok(ended) = exit.wait_for(Option::is_some) => {
            return Err(anyhow::anyhow!(
                "the sandbox VM ended while booting ({:?}) before its agent came up",
                *ended
            )
            .into());
        }
    }
    drop(ready);
    let agent = agent_client::connect(&hypervisor.agent_socket(), timeout, logger).await?;
    let mut request = CreateSandboxRequest::new();
    request.sandbox_id = id.to_string();
    request.hostname = hostname.to_string();
    request.shared_fs_tag = SHARED_FS_TAG.to_string();
    if let Some(network) = network {
        request.interfaces = network.interfaces.iter().map(|i| i.spec.clone()).collect();
        request.routes = network.routes.clone();
        request.neighbours = network.neighbours.clone();
    }
    agent
        .create_sandbox(deadline(CONTROL_CALL_TIMEOUT), &request)
        .await
        .map_err(|err| Error::from_agent("CreateSandbox", err))?;
    info!(logger, "sandbox ready"; "elapsed_ms" => started.elapsed().as_millis() as u64);
    Ok(agent)
}

/// Creates the run dir, first clearing what a crashed earlier sandbox of the same id left.
fn prepare_run_dir(run_dir: &Path) -> Result<()> {
    if run_dir.exists() {
        if let Some(old) = state::load(run_dir)? {
            bazaar_hypervisor::kill_recorded(&old.processes);
        }
        mounts::unmount_all_under(run_dir)?;
        mounts::remove_dir_without_mounts(run_dir)?;
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    // Root only: the dir holds the hybrid-vsock socket (a connection is a connection to the
    // agent API) and the sockets of QEMU's monitor and of the vhost-user backends.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", run_dir.display()))
}

/// Unmounts whatever is left under the run dir and removes it.
pub fn remove_run_dir(run_dir: &Path, logger: &Logger) {
    let result = mounts::unmount_all_under(run_dir)
        .and_then(|()| mounts::remove_dir_without_mounts(run_dir));
    if let Err(err) = result {
        warn!(logger, "removing the run dir"; "dir" => %run_dir.display(), "error" => format!("{err:#}"));
    }
}
