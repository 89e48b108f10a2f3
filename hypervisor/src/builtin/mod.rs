//! The built-in backend: Bazaar's own KVM VMM (`bazaar-vmm`, the `vmm` crate) as a child
//! process, with virtiofsd serving the shared directory over vhost-user. The VMM's vsock
//! device speaks hybrid vsock itself, so unlike QEMU no vsock helper runs.

pub mod args;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use slog::{info, warn, Logger};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::args::{NetworkArg, SharedFsArg, VmmArgs};
use crate::console::{forward_console, ConsoleSink};
use crate::lifecycle::{self, ExitCell};
use crate::process::{
    self, command_line, remove_files, with_suffix, ChildHandle, FdMapping, Stdout,
};
use crate::qemu::cmdline::virtiofsd_args;
use crate::{Device, Hypervisor, NetworkDevice, ProcessRecord, VmConfig, VmExit};

/// Hybrid-vsock socket of the host side (the agent socket).
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// vhost-user socket between the VMM and virtiofsd.
pub const VIRTIOFSD_SOCKET: &str = "virtiofsd.sock";

/// The VMM's descriptor number for the first tap (0-2 are stdio).
const FIRST_TAP_FD: i32 = 3;
/// How long virtiofsd may take to create its socket.
const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the VMM may take to build the VM (its vsock socket appears once devices exist).
const VMM_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to exit after SIGTERM, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long `stop` waits for the exit monitor to finish its cleanup.
const MONITOR_WAIT: Duration = Duration::from_secs(10);

/// Where the backend's programs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinPaths {
    pub vmm: PathBuf,
    pub virtiofsd: PathBuf,
}

impl Default for BuiltinPaths {
    fn default() -> Self {
        BuiltinPaths {
            vmm: PathBuf::from("/usr/local/bin/bazaar-vmm"),
            virtiofsd: PathBuf::from("/usr/local/libexec/bazaar/virtiofsd"),
        }
    }
}

pub struct Builtin {
    config: VmConfig,
    paths: BuiltinPaths,
    logger: Logger,
    shared_fs: Option<(String, PathBuf)>,
    networks: Vec<NetworkDevice>,
    console_sink: Option<ConsoleSink>,
    state: State,
    exit: ExitCell,
}

enum State {
    Created,
    Running(Running),
    Stopped,
}

struct Running {
    children: Arc<Children>,
    stopping: Arc<AtomicBool>,
    monitor: JoinHandle<()>,
}

/// The processes of one VM and the sockets in the run dir that belong to them.
#[derive(Default)]
struct Children {
    virtiofsd: Option<ChildHandle>,
    vmm: Option<ChildHandle>,
    sockets: Vec<PathBuf>,
}

impl Builtin {
    /// Prepares a VM; nothing is started yet. The built-in VMM needs KVM: `Tcg` is refused.
    pub fn new(config: VmConfig, paths: BuiltinPaths, logger: Logger) -> Result<Builtin> {
        if config.acceleration == crate::Acceleration::Tcg {
            bail!(
                "the built-in VMM runs only on KVM; acceleration \"tcg\" needs hypervisor \"qemu\""
            );
        }
        // With "auto", refuse here a host whose KVM cannot run Linux, rather than after the
        // VMM started (an explicit "kvm" is taken at its word: tests run hand-made guests).
        if config.acceleration == crate::Acceleration::Auto {
            let choice = crate::probe::resolve(crate::Acceleration::Auto)?;
            if choice.acceleration != crate::Acceleration::Kvm {
                bail!(
                    "the built-in VMM needs KVM that can run Linux, and this host has none ({}); \
                     use hypervisor \"qemu\"",
                    choice.reason
                );
            }
        }
        if config.vcpus == 0 || config.memory_mib == 0 {
            bail!(
                "a VM needs at least one vCPU and some memory (got {} vCPUs, {} MiB)",
                config.vcpus,
                config.memory_mib
            );
        }
        let logger = logger.new(slog::o!("hypervisor" => "builtin"));
        Ok(Builtin {
            config,
            paths,
            logger,
            shared_fs: None,
            networks: Vec::new(),
            console_sink: None,
            state: State::Created,
            exit: ExitCell::new(),
        })
    }

    /// Also sends every guest console line to `sink` (besides the log).
    pub fn with_console_sink(mut self, sink: ConsoleSink) -> Builtin {
        self.console_sink = Some(sink);
        self
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.config.run_dir.join(name)
    }

    /// The VMM arguments `start` uses.
    pub fn vmm_args(&self) -> Result<Vec<std::ffi::OsString>> {
        let vsock_socket = self.socket(VSOCK_SOCKET);
        let fs_socket = self.socket(VIRTIOFSD_SOCKET);
        let networks: Vec<NetworkArg> = (0..)
            .zip(&self.networks)
            .map(|(i, net)| NetworkArg { tap_fd: FIRST_TAP_FD + i, mac: &net.mac })
            .collect();
        args::vmm_args(&VmmArgs {
            config: &self.config,
            vsock_socket: &vsock_socket,
            shared_fs: self
                .shared_fs
                .as_ref()
                .map(|(tag, _)| SharedFsArg { tag, socket: &fs_socket }),
            networks: &networks,
        })
    }

    /// Copies of the tap descriptors for the VMM, at the numbers `vmm_args` names.
    fn tap_fds(&self) -> Result<Vec<FdMapping>> {
        (0..)
            .zip(&self.networks)
            .map(|(i, net)| {
                let parent_fd = net.tap.try_clone().context("duplicating a tap descriptor")?;
                Ok(FdMapping { parent_fd, child_fd: FIRST_TAP_FD + i })
            })
            .collect()
    }

    /// Checks everything `start` needs from the host, naming the first thing missing.
    fn preflight(&self) -> Result<()> {
        let mut files = vec![
            ("built-in VMM binary", &self.paths.vmm),
            ("guest kernel", &self.config.kernel),
            ("guest initrd", &self.config.initrd),
        ];
        if let Some((tag, dir)) = &self.shared_fs {
            files.push(("virtiofsd binary", &self.paths.virtiofsd));
            if !dir.is_dir() {
                bail!("shared directory {} (virtio-fs tag {tag}) does not exist", dir.display());
            }
        }
        for (what, path) in files {
            if !path.is_file() {
                bail!("{what} {} does not exist", path.display());
            }
        }
        std::fs::create_dir_all(&self.config.run_dir)
            .with_context(|| format!("creating the run dir {}", self.config.run_dir.display()))?;
        Ok(())
    }

    /// Starts virtiofsd and the VMM, recording each in `children` as soon as it runs.
    async fn launch(&self, children: &mut Children) -> Result<()> {
        let vsock_socket = self.socket(VSOCK_SOCKET);
        let fs_socket = self.socket(VIRTIOFSD_SOCKET);
        children.sockets =
            vec![vsock_socket.clone(), fs_socket.clone(), with_suffix(&fs_socket, ".pid")];
        // Leftovers of an earlier run would make the VMM fail to bind or the waits succeed
        // too early.
        remove_files(&children.sockets, &self.logger);

        if let Some((_, dir)) = &self.shared_fs {
            let args = virtiofsd_args(&fs_socket, dir);
            let (virtiofsd, _) = process::spawn(
                "virtiofsd",
                &self.paths.virtiofsd,
                &args,
                Stdout::Log,
                &self.logger,
            )?;
            children.virtiofsd = Some(virtiofsd.clone());
            virtiofsd.wait_for_path(&fs_socket, HELPER_READY_TIMEOUT).await?;
        }

        let args = self.vmm_args()?;
        info!(self.logger, "starting the built-in VMM"; "command" => command_line(&self.paths.vmm, &args));
        let (vmm, console) = process::spawn_with_fds(
            "bazaar-vmm",
            &self.paths.vmm,
            &args,
            Stdout::Take,
            self.tap_fds()?,
            &self.logger,
        )?;
        children.vmm = Some(vmm.clone());
        if let Some(console) = console {
            tokio::spawn(forward_console(
                console,
                self.logger.new(slog::o!("process" => "guest")),
                self.console_sink.clone(),
            ));
        }
        match vmm.wait_for_path(&vsock_socket, VMM_READY_TIMEOUT).await {
            Ok(()) => Ok(()),
            Err(err) => match vmm.exited() {
                // Status 0 is a guest that ran and reset or powered off before the socket was
                // seen (and removed again): the VM did start; the monitor reports its end.
                Some(exit) if exit.code == Some(0) => Ok(()),
                Some(exit) => Err(anyhow!(
                    "the built-in VMM exited ({exit}) while starting: {}",
                    vmm.tail.summary()
                )),
                None => Err(err),
            },
        }
    }

    /// Spawns the task that notices the VMM's exit, ends virtiofsd, removes the sockets and
    /// then publishes how the VM ended.
    fn spawn_monitor(&self, children: Arc<Children>, stopping: Arc<AtomicBool>) -> JoinHandle<()> {
        let Some(vmm) = children.vmm.clone() else {
            return tokio::spawn(async {});
        };
        let logger = self.logger.clone();
        lifecycle::spawn_monitor(
            vmm,
            stopping,
            self.exit.clone(),
            self.logger.clone(),
            move || async move { children.end_all(&logger).await },
        )
    }
}

impl Children {
    fn all(&self) -> impl Iterator<Item = &ChildHandle> {
        self.virtiofsd.iter().chain(self.vmm.iter())
    }

    /// Ends the VMM (SIGTERM, then SIGKILL after the grace period), then virtiofsd, and
    /// removes the sockets. Idempotent.
    async fn end_all(&self, logger: &Logger) -> Result<()> {
        let mut result = Ok(());
        // The VMM first: virtiofsd exits by itself once its frontend is gone.
        for child in self.vmm.iter().chain(self.virtiofsd.iter()) {
            if let Err(err) = child.terminate(STOP_GRACE).await {
                result = Err(err);
            }
        }
        remove_files(&self.sockets, logger);
        result
    }
}

#[async_trait]
impl Hypervisor for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn add_device(&mut self, device: Device) -> Result<()> {
        if !matches!(self.state, State::Created) {
            bail!("devices can only be added before the VM starts");
        }
        match device {
            Device::SharedFs { tag, host_dir } => {
                if let Some((existing, _)) = &self.shared_fs {
                    bail!("the built-in VMM backend supports one shared directory; tag {existing} is already configured");
                }
                self.shared_fs = Some((tag, host_dir));
            }
            Device::Network(net) => self.networks.push(net),
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<()> {
        if !matches!(self.state, State::Created) {
            bail!("the VM was already started");
        }
        self.preflight()?;
        let started = std::time::Instant::now();
        let mut children = Children::default();
        if let Err(err) = self.launch(&mut children).await {
            if let Err(stop_err) = children.end_all(&self.logger).await {
                warn!(self.logger, "ending the processes of a failed start"; "error" => format!("{stop_err:#}"));
            }
            self.state = State::Stopped;
            self.exit.publish(VmExit::Stopped);
            return Err(
                err.context(format!("starting the VM of sandbox {}", self.config.sandbox_id))
            );
        }
        let children = Arc::new(children);
        let stopping = Arc::new(AtomicBool::new(false));
        let monitor = self.spawn_monitor(children.clone(), stopping.clone());
        info!(self.logger, "VM running"; "elapsed_ms" => started.elapsed().as_millis() as u64,
            "pids" => ?children.all().map(|c| (c.name, c.pid)).collect::<Vec<_>>());
        self.state = State::Running(Running { children, stopping, monitor });
        Ok(())
    }

    fn agent_socket(&self) -> PathBuf {
        self.socket(VSOCK_SOCKET)
    }

    async fn wait(&self) -> VmExit {
        self.exit.wait().await
    }

    fn exit_receiver(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit.subscribe()
    }

    async fn stop(&mut self) -> Result<()> {
        let running = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Created | State::Stopped => {
                self.exit.publish(VmExit::Stopped);
                return Ok(());
            }
            State::Running(running) => running,
        };
        running.stopping.store(true, Ordering::SeqCst);
        self.networks.clear();
        let result = running.children.end_all(&self.logger).await;
        if tokio::time::timeout(MONITOR_WAIT, running.monitor).await.is_err() {
            warn!(self.logger, "the exit monitor did not finish");
        }
        self.exit.publish(VmExit::Stopped);
        result.context("stopping the VM")
    }

    fn processes(&self) -> Vec<ProcessRecord> {
        match &self.state {
            State::Running(running) => lifecycle::live_records(running.children.all()),
            State::Created | State::Stopped => Vec::new(),
        }
    }

    fn vmm_pid(&self) -> Option<u32> {
        match &self.state {
            State::Running(running) => {
                running.children.vmm.as_ref().filter(|c| c.exited().is_none()).map(|c| c.pid)
            }
            State::Created | State::Stopped => None,
        }
    }
}

impl Drop for Builtin {
    /// Best effort when `stop` was not called: see `lifecycle::kill_now`.
    fn drop(&mut self) {
        if let State::Running(running) = &self.state {
            let children = &running.children;
            lifecycle::kill_now(children.all(), &children.sockets, &running.stopping, &self.logger);
        }
    }
}
