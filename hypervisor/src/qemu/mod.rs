//! The QEMU backend: `qemu-system-x86_64 -M microvm` with a vhost-user vsock device served by
//! `vhost-device-vsock` and a vhost-user virtio-fs device served by `virtiofsd`.

pub mod cmdline;
mod qmp;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use nix::sys::signal::Signal;
use slog::{debug, info, warn, Logger};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::cmdline::{NetworkArg, QemuArgs, SharedFsArg};
use self::qmp::Qmp;
use crate::console::{forward_console, ConsoleSink};
use crate::lifecycle::{self, ExitCell};
use crate::probe::{self, AccelChoice};
use crate::process::{
    self, command_line, remove_files, with_suffix, ChildHandle, FdMapping, Stdout,
};
use crate::{Device, Hypervisor, NetworkDevice, ProcessRecord, VmConfig, VmExit};

/// vhost-user socket between QEMU and vhost-device-vsock.
pub const VHOST_VSOCK_SOCKET: &str = "vhost-vsock.sock";
/// Hybrid-vsock socket of the host side (the agent socket).
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// vhost-user socket between QEMU and virtiofsd.
pub const VIRTIOFSD_SOCKET: &str = "virtiofsd.sock";
/// QMP socket of QEMU.
pub const QMP_SOCKET: &str = "qmp.sock";

/// QEMU's descriptor number for the first tap (0-2 are stdio).
const FIRST_TAP_FD: i32 = 3;
/// How long a helper may take to create its socket.
const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long QEMU may take to set the machine up and run it.
const QEMU_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a QMP exchange during start or stop may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a process may take to exit after being asked to, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long `stop` waits for the exit monitor to finish its cleanup.
const MONITOR_WAIT: Duration = Duration::from_secs(10);

/// Where the backend's programs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuPaths {
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub vhost_vsock: PathBuf,
}

impl Default for QemuPaths {
    fn default() -> Self {
        QemuPaths {
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            virtiofsd: PathBuf::from("/usr/local/libexec/bazaar/virtiofsd"),
            vhost_vsock: PathBuf::from("/usr/local/libexec/bazaar/vhost-device-vsock"),
        }
    }
}

/// A virtio-fs share added before `start`.
#[derive(Debug, Clone)]
struct SharedFs {
    tag: String,
    host_dir: PathBuf,
}

pub struct Qemu {
    config: VmConfig,
    paths: QemuPaths,
    logger: Logger,
    acceleration: AccelChoice,
    shared_fs: Option<SharedFs>,
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
    /// Set by `stop`, so the exit monitor reports `VmExit::Stopped`.
    stopping: Arc<AtomicBool>,
    monitor: JoinHandle<()>,
}

/// The processes of one VM, in start order, and the sockets in the run dir that belong to them.
#[derive(Default)]
struct Children {
    vhost_vsock: Option<ChildHandle>,
    virtiofsd: Option<ChildHandle>,
    qemu: Option<ChildHandle>,
    sockets: Vec<PathBuf>,
}

impl Qemu {
    /// Prepares a VM; nothing is started yet. Resolves `Acceleration::Auto` here, so a host that
    /// cannot honour an explicit `Kvm` fails early.
    pub fn new(config: VmConfig, paths: QemuPaths, logger: Logger) -> Result<Qemu> {
        if config.vcpus == 0 || config.memory_mib == 0 {
            bail!(
                "a VM needs at least one vCPU and some memory (got {} vCPUs, {} MiB)",
                config.vcpus,
                config.memory_mib
            );
        }
        let acceleration = probe::resolve(config.acceleration)?;
        let logger = logger.new(slog::o!("hypervisor" => "qemu"));
        info!(logger, "acceleration chosen";
            "acceleration" => ?acceleration.acceleration, "reason" => &acceleration.reason);
        Ok(Qemu {
            config,
            paths,
            logger,
            acceleration,
            shared_fs: None,
            networks: Vec::new(),
            console_sink: None,
            state: State::Created,
            exit: ExitCell::new(),
        })
    }

    /// Also sends every guest console line to `sink` (besides the log).
    pub fn with_console_sink(mut self, sink: ConsoleSink) -> Qemu {
        self.console_sink = Some(sink);
        self
    }

    /// The acceleration in use and why.
    pub fn acceleration(&self) -> &AccelChoice {
        &self.acceleration
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.config.run_dir.join(name)
    }

    /// The QEMU arguments `start` uses.
    pub fn qemu_args(&self) -> Result<Vec<OsString>> {
        let vhost_vsock_socket = self.socket(VHOST_VSOCK_SOCKET);
        let virtiofsd_socket = self.socket(VIRTIOFSD_SOCKET);
        let qmp_socket = self.socket(QMP_SOCKET);
        cmdline::qemu_args(&QemuArgs {
            config: &self.config,
            acceleration: self.acceleration.acceleration,
            vhost_vsock_socket: &vhost_vsock_socket,
            shared_fs: self
                .shared_fs
                .as_ref()
                .map(|fs| SharedFsArg { tag: &fs.tag, socket: &virtiofsd_socket }),
            networks: &self.network_args(),
            qmp_socket: &qmp_socket,
        })
    }

    /// The virtio-net devices as QEMU sees them: tap number `i` is inherited as descriptor
    /// `FIRST_TAP_FD + i` (see `tap_fds`).
    fn network_args(&self) -> Vec<NetworkArg<'_>> {
        (0..)
            .zip(&self.networks)
            .map(|(i, net)| NetworkArg { tap_fd: FIRST_TAP_FD + i, mac: &net.mac })
            .collect()
    }

    /// Copies of the tap descriptors for QEMU, at the numbers `network_args` names.
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
            ("QEMU binary", &self.paths.qemu),
            ("vhost-device-vsock binary", &self.paths.vhost_vsock),
            ("guest kernel", &self.config.kernel),
            ("guest initrd", &self.config.initrd),
        ];
        if self.shared_fs.is_some() {
            files.push(("virtiofsd binary", &self.paths.virtiofsd));
        }
        for (what, path) in files {
            if !path.is_file() {
                bail!("{what} {} does not exist", path.display());
            }
        }
        if let Some(fs) = &self.shared_fs {
            if !fs.host_dir.is_dir() {
                bail!(
                    "shared directory {} (virtio-fs tag {}) does not exist",
                    fs.host_dir.display(),
                    fs.tag
                );
            }
        }
        std::fs::create_dir_all(&self.config.run_dir)
            .with_context(|| format!("creating the run dir {}", self.config.run_dir.display()))?;
        Ok(())
    }

    /// Starts the helpers and QEMU, recording each in `children` as soon as it runs.
    async fn launch(&self, children: &mut Children) -> Result<()> {
        let vhost_vsock_socket = self.socket(VHOST_VSOCK_SOCKET);
        let vsock_socket = self.socket(VSOCK_SOCKET);
        let virtiofsd_socket = self.socket(VIRTIOFSD_SOCKET);
        let qmp_socket = self.socket(QMP_SOCKET);
        children.sockets = vec![
            vhost_vsock_socket.clone(),
            vsock_socket.clone(),
            virtiofsd_socket.clone(),
            // virtiofsd's lock file next to its socket.
            with_suffix(&virtiofsd_socket, ".pid"),
            qmp_socket.clone(),
        ];
        // Leftovers of an earlier run in the same dir would make the helpers fail to bind or
        // make the waits below succeed too early.
        remove_files(&children.sockets, &self.logger);

        let args = cmdline::vhost_vsock_args(&vhost_vsock_socket, &vsock_socket);
        let (vhost_vsock, _) = process::spawn(
            "vhost-device-vsock",
            &self.paths.vhost_vsock,
            &args,
            Stdout::Log,
            &self.logger,
        )?;
        children.vhost_vsock = Some(vhost_vsock.clone());
        vhost_vsock.wait_for_path(&vhost_vsock_socket, HELPER_READY_TIMEOUT).await?;

        if let Some(fs) = &self.shared_fs {
            let args = cmdline::virtiofsd_args(&virtiofsd_socket, &fs.host_dir);
            let (virtiofsd, _) = process::spawn(
                "virtiofsd",
                &self.paths.virtiofsd,
                &args,
                Stdout::Log,
                &self.logger,
            )?;
            children.virtiofsd = Some(virtiofsd.clone());
            virtiofsd.wait_for_path(&virtiofsd_socket, HELPER_READY_TIMEOUT).await?;
        }

        let args = self.qemu_args()?;
        info!(self.logger, "starting QEMU"; "command" => command_line(&self.paths.qemu, &args));
        let (qemu, console) = process::spawn_with_fds(
            "qemu",
            &self.paths.qemu,
            &args,
            Stdout::Take,
            self.tap_fds()?,
            &self.logger,
        )?;
        children.qemu = Some(qemu.clone());
        if let Some(console) = console {
            tokio::spawn(forward_console(
                console,
                self.logger.new(slog::o!("process" => "guest")),
                self.console_sink.clone(),
            ));
        }
        let ready = async {
            qemu.wait_for_path(&qmp_socket, QEMU_READY_TIMEOUT).await?;
            let mut qmp = Qmp::connect(&qmp_socket, QMP_TIMEOUT).await?;
            let status = qmp.execute("query-status").await?;
            let run_state = status.get("status").and_then(|s| s.as_str()).unwrap_or("unknown");
            if run_state != "running" {
                bail!("QEMU reports VM state {run_state:?}, expected \"running\"");
            }
            drop(qmp);
            vhost_vsock.wait_for_path(&vsock_socket, HELPER_READY_TIMEOUT).await
        };
        ready.await.map_err(|err| match qemu.exited() {
            Some(exit) => anyhow!("QEMU exited ({exit}) while starting: {}", qemu.tail.summary()),
            None => err,
        })
    }

    /// Spawns the task that notices QEMU's exit, ends the helpers, removes the sockets and then
    /// publishes how the VM ended.
    fn spawn_monitor(&self, children: Arc<Children>, stopping: Arc<AtomicBool>) -> JoinHandle<()> {
        let Some(qemu) = children.qemu.clone() else {
            return tokio::spawn(async {});
        };
        let logger = self.logger.clone();
        lifecycle::spawn_monitor(
            qemu,
            stopping,
            self.exit.clone(),
            self.logger.clone(),
            move || async move { children.end_all(&logger).await },
        )
    }
}

impl Children {
    fn all(&self) -> impl Iterator<Item = &ChildHandle> {
        self.vhost_vsock.iter().chain(self.virtiofsd.iter()).chain(self.qemu.iter())
    }

    /// Asks QEMU to quit (QMP, else SIGTERM), SIGKILLs it after the grace period, then ends the
    /// helpers the same way and removes the sockets. Idempotent.
    async fn end_all_with_quit(&self, qmp_socket: &Path, logger: &Logger) -> Result<()> {
        if let Some(qemu) = &self.qemu {
            if qemu.exited().is_none() {
                let quit = async { Qmp::connect(qmp_socket, QMP_TIMEOUT).await?.quit().await };
                if let Err(err) = quit.await {
                    debug!(logger, "QMP quit failed, sending SIGTERM"; "error" => format!("{err:#}"));
                    qemu.signal(Signal::SIGTERM);
                }
                qemu.kill_after(STOP_GRACE).await?;
            }
        }
        self.end_all(logger).await
    }

    /// Ends every process still running (QEMU included, by SIGTERM) and removes the sockets.
    async fn end_all(&self, logger: &Logger) -> Result<()> {
        let qemu = async {
            match &self.qemu {
                Some(qemu) => qemu.terminate(STOP_GRACE).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let qemu_result = qemu.await;
        // virtiofsd usually exits by itself when QEMU disconnects; vhost-device-vsock waits for
        // the next connection and needs the signal.
        let end = |child: &Option<ChildHandle>| {
            let child = child.clone();
            async move {
                match child {
                    Some(child) => child.terminate(STOP_GRACE).await.map(|_| ()),
                    None => Ok(()),
                }
            }
        };
        let (vsock_result, fs_result) = tokio::join!(end(&self.vhost_vsock), end(&self.virtiofsd));
        remove_files(&self.sockets, logger);
        qemu_result.and(vsock_result).and(fs_result)
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn add_device(&mut self, device: Device) -> Result<()> {
        if !matches!(self.state, State::Created) {
            bail!("devices can only be added before the VM starts");
        }
        match device {
            Device::SharedFs { tag, host_dir } => {
                if let Some(existing) = &self.shared_fs {
                    bail!("the QEMU backend supports one shared directory; tag {} is already configured", existing.tag);
                }
                self.shared_fs = Some(SharedFs { tag, host_dir });
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

    async fn stop(&mut self) -> Result<()> {
        let running = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Created | State::Stopped => {
                self.exit.publish(VmExit::Stopped);
                return Ok(());
            }
            State::Running(running) => running,
        };
        running.stopping.store(true, Ordering::SeqCst);
        // QEMU holds the taps open too; once it is gone they disappear with these copies.
        self.networks.clear();
        let result =
            running.children.end_all_with_quit(&self.socket(QMP_SOCKET), &self.logger).await;
        if tokio::time::timeout(MONITOR_WAIT, running.monitor).await.is_err() {
            warn!(self.logger, "the exit monitor did not finish");
        }
        self.exit.publish(VmExit::Stopped);
        match &result {
            Ok(()) => info!(self.logger, "VM stopped"),
            Err(err) => warn!(self.logger, "stopping the VM"; "error" => format!("{err:#}")),
        }
        result.context("stopping the VM")
    }

    fn vmm_pid(&self) -> Option<u32> {
        match &self.state {
            State::Running(running) => {
                running.children.qemu.as_ref().filter(|c| c.exited().is_none()).map(|c| c.pid)
            }
            State::Created | State::Stopped => None,
        }
    }

    fn processes(&self) -> Vec<ProcessRecord> {
        match &self.state {
            State::Running(running) => lifecycle::live_records(running.children.all()),
            State::Created | State::Stopped => Vec::new(),
        }
    }

    fn exit_receiver(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit.subscribe()
    }
}

impl Drop for Qemu {
    /// Best effort when `stop` was not called: see `lifecycle::kill_now`.
    fn drop(&mut self) {
        if let State::Running(running) = &self.state {
            let children = &running.children;
            lifecycle::kill_now(children.all(), &children.sockets, &running.stopping, &self.logger);
        }
    }
}

#[cfg(test)]
mod tests;
