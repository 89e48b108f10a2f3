//! Every task of one sandbox, as containerd's Task API sees them: the operations the shim maps
//! its RPCs onto. The sandbox VM is booted by the first container created in it and stopped by
//! `shutdown` once no container is left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bazaar_protocols::agent::{
    CreateContainerRequest, ExecProcessRequest, ListProcessesRequest, PauseContainerRequest,
    RemoveContainerRequest, ResumeContainerRequest, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, StatsContainerResponse, TtyWinResizeRequest, UpdateContainerRequest,
    WaitProcessRequest,
};
use slog::{info, warn, Logger};
use tokio::sync::{Mutex, OnceCell};

use crate::agent_client::{deadline, no_deadline, CONTROL_CALL_TIMEOUT};
use crate::config::Config;
use crate::container::{Container, ProcessEntry};
use crate::error::{Error, Result};
use crate::events::{Event, EventSender};
use crate::guest_spec;
use crate::hooks::{self, ContainerHooks, HookKind};
use crate::io::{spawn_output_copy, spawn_stdin_copy, OutputStream};
use crate::mounts::{self, RootfsMount};
use crate::process::{Exit, Process, Status, StdioPaths};
use crate::sandbox::{Sandbox, StartOptions};

/// How long the exit report waits for the process's output to drain after it exited (a
/// daemonised grandchild may hold stdout open forever).
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What containerd's Create carries.
#[derive(Debug, Clone)]
pub struct CreateTask {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub stdio: StdioPaths,
}

/// A process's state for containerd's State call.
#[derive(Debug, Clone)]
pub struct TaskState {
    pub id: String,
    pub exec_id: String,
    pub bundle: PathBuf,
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub exit: Option<Exit>,
}

pub struct Tasks {
    sandbox_id: String,
    config: Config,
    logger: Logger,
    events: EventSender,
    sandbox: OnceCell<Arc<Sandbox>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

impl Tasks {
    pub fn new(sandbox_id: &str, config: Config, logger: Logger, events: EventSender) -> Tasks {
        Tasks {
            sandbox_id: sandbox_id.to_string(),
            config,
            logger,
            events,
            sandbox: OnceCell::new(),
            containers: Mutex::new(HashMap::new()),
        }
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    fn emit(&self, event: Event) {
        // The receiver lives as long as the shim; a send after it is gone has nobody to tell.
        let _ = self.events.send(event);
    }

    /// The running sandbox. Every call but the first container's Create finds it booted.
    async fn sandbox(&self) -> Result<Arc<Sandbox>> {
        self.sandbox.get().cloned().ok_or_else(|| {
            Error::FailedPrecondition(format!("sandbox {} is not running", self.sandbox_id))
        })
    }

    /// Boots the sandbox on first use. `options` apply only then.
    async fn sandbox_for_create(&self, options: &StartOptions<'_>) -> Result<Arc<Sandbox>> {
        self.sandbox
            .get_or_try_init(|| async {
                let sandbox =
                    Sandbox::start(&self.sandbox_id, options, &self.config, &self.logger).await?;
                self.spawn_oom_watch(&sandbox);
                Ok(Arc::new(sandbox))
            })
            .await
            .cloned()
    }

    /// The guest pid of the pod's pause container, for a CRI container of this shim's pod
    /// (what containerd was told as its pid, so what CRI names its namespaces by).
    async fn pod_pause_pid(&self, spec: &oci_spec::runtime::Spec) -> Option<u32> {
        let sandbox_id = guest_spec::cri_sandbox_id(spec)?;
        let containers = self.containers.lock().await;
        let pid = containers.get(sandbox_id)?.init.process.pid();
        (pid != 0).then_some(pid)
    }

    /// Keeps one GetOOMEvent call outstanding for the sandbox's life and reports each OOM kill.
    fn spawn_oom_watch(&self, sandbox: &Sandbox) {
        let agent = sandbox.agent.clone();
        let events = self.events.clone();
        let logger = self.logger.clone();
        tokio::spawn(async move {
            let request = bazaar_protocols::agent::GetOOMEventRequest::new();
            loop {
                match agent.get_oom_event(no_deadline(), &request).await {
                    Ok(event) => {
                        info!(logger, "container hit its memory limit"; "container" => &event.container_id);
                        let _ = events.send(Event::Oom { container_id: event.container_id });
                    }
                    Err(err) => {
                        // The VM is gone or going: nothing more to watch.
                        slog::debug!(logger, "OOM watch ended"; "error" => %err);
                        return;
                    }
                }
            }
        });
    }

    async fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))
    }

    async fn process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<Container>, Arc<ProcessEntry>)> {
        let container = self.container(id).await?;
        let entry = container.process(exec_id).ok_or_else(|| {
            Error::NotFound(format!("exec {exec_id} of container {id} not found"))
        })?;
        Ok((container, entry))
    }

    /// Creates a container in the sandbox (booting the VM first if this is the first one). Its
    /// init process exists afterwards but runs the user's program only on `start`.
    pub async fn create(&self, task: CreateTask) -> Result<u32> {
        if self.containers.lock().await.contains_key(&task.id) {
            return Err(Error::AlreadyExists(format!("container {} already exists", task.id)));
        }
        let spec_path = task.bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path).map_err(|err| {
            Error::InvalidArgument(format!("cannot read OCI spec {}: {err}", spec_path.display()))
        })?;
        let mut guest = guest_spec::for_guest(spec.clone(), &task.id, &task.bundle)
            .map_err(|err| Error::InvalidArgument(format!("{err:#}")))?;
        if let Some(pause_pid) = self.pod_pause_pid(&spec).await {
            guest_spec::join_pod_pid_namespace(&mut guest.spec, &spec, pause_pid);
        }
        hooks::validate(&spec).map_err(|err| Error::InvalidArgument(format!("{err:#}")))?;
        let container_hooks = ContainerHooks::from_spec(&spec);
        // Under runc a container without a hostname of its own sees the host's; the guest
        // plays the host's part here, so it takes the host's name unless the spec gives one.
        let hostname = match spec.hostname().as_deref().filter(|name| !name.is_empty()) {
            Some(name) => name.to_string(),
            None => nix::unistd::gethostname()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        // A CRI pod's VMM goes into the pause container's cgroup on the host (`host_cgroup`).
        let host_cgroup = crate::host_cgroup::pod_cgroup_path(&spec);
        let netns = joined_netns(&spec);
        let options = StartOptions {
            hostname: &hostname,
            netns: netns.as_deref(),
            host_cgroup: host_cgroup.as_deref(),
        };
        let sandbox = self.sandbox_for_create(&options).await?;

        let shared_root = sandbox.shared_dir.join(&task.id);
        let mounted_rootfs = match self.share_container_files(&task, &spec, &guest.shares, &sandbox)
        {
            Ok(mounted) => mounted,
            Err(err) => {
                undo_container_mounts(
                    &shared_root,
                    !task.rootfs.is_empty(),
                    &task.bundle,
                    &self.logger,
                );
                return Err(Error::Internal(err));
            }
        };

        let mut request = CreateContainerRequest::new();
        request.container_id = task.id.clone();
        request.oci_spec_json =
            serde_json::to_vec(&guest.spec).context("serialising the guest spec")?;
        request.terminal = task.stdio.terminal;
        request.stdin = !task.stdio.stdin.is_empty();
        if let Err(err) =
            sandbox.agent.create_container(deadline(CONTROL_CALL_TIMEOUT), &request).await
        {
            undo_container_mounts(
                &shared_root,
                mounted_rootfs.is_some(),
                &task.bundle,
                &self.logger,
            );
            return Err(Error::from_agent("CreateContainer", err));
        }
        // The container exists (in the guest) and has not started: the runtime spec's point for
        // these hooks. They run on the host (see `hooks`).
        if let Err(err) =
            self.run_create_hooks(&container_hooks, &task.id, &task.bundle, &sandbox).await
        {
            self.abort_create(&task, &container_hooks, &sandbox, mounted_rootfs.is_some()).await;
            return Err(Error::Internal(err));
        }

        let init = ProcessEntry::new(Process::new(&task.id, "", task.stdio.clone()), None);
        self.attach_stdio(&sandbox, &init);
        let container = Arc::new(Container::new(
            task.id.clone(),
            task.bundle.clone(),
            mounted_rootfs,
            shared_root,
            init,
            container_hooks,
        ));
        self.containers.lock().await.insert(task.id.clone(), container);
        info!(self.logger, "container created"; "container" => &task.id);
        self.emit(Event::Created {
            container_id: task.id,
            bundle: task.bundle.display().to_string(),
            pid: 0,
            stdio: task.stdio,
        });
        Ok(0)
    }

    /// prestart (deprecated), createRuntime and createContainer hooks, in the order runc runs
    /// them; the first failure stops them.
    async fn run_create_hooks(
        &self,
        hooks: &ContainerHooks,
        id: &str,
        bundle: &Path,
        sandbox: &Sandbox,
    ) -> anyhow::Result<()> {
        for kind in [HookKind::Prestart, HookKind::CreateRuntime, HookKind::CreateContainer] {
            hooks.run(kind, id, sandbox.vmm_pid, bundle, &self.logger).await?;
        }
        Ok(())
    }

    /// Undoes a create whose hooks failed: the container in the guest, the shared mounts, and
    /// then the poststop hooks, as runc's cleanup of a failed create runs them.
    async fn abort_create(
        &self,
        task: &CreateTask,
        hooks: &ContainerHooks,
        sandbox: &Sandbox,
        rootfs_mounted_by_us: bool,
    ) {
        let mut request = RemoveContainerRequest::new();
        request.container_id = task.id.clone();
        if let Err(err) =
            sandbox.agent.remove_container(deadline(CONTROL_CALL_TIMEOUT), &request).await
        {
            warn!(self.logger, "guest failed to remove the container"; "container" => &task.id, "error" => %err);
        }
        undo_container_mounts(
            &sandbox.shared_dir.join(&task.id),
            rootfs_mounted_by_us,
            &task.bundle,
            &self.logger,
        );
        let _ = hooks
            .run(HookKind::Poststop, &task.id, sandbox.vmm_pid, &task.bundle, &self.logger)
            .await;
    }

    /// Mounts the container's rootfs (when containerd passed mounts) and binds it and every
    /// bind-mount source into the shared directory. Returns the rootfs mount point it created.
    fn share_container_files(
        &self,
        task: &CreateTask,
        spec: &oci_spec::runtime::Spec,
        shares: &[guest_spec::ShareRequest],
        sandbox: &Sandbox,
    ) -> anyhow::Result<Option<PathBuf>> {
        let (host_rootfs, mounted) = if task.rootfs.is_empty() {
            let root = spec.root().as_ref().context("the OCI spec has no root")?;
            let path = if root.path().is_absolute() {
                root.path().clone()
            } else {
                task.bundle.join(root.path())
            };
            (path, None)
        } else {
            let target = task.bundle.join("rootfs");
            mounts::mount_rootfs(&task.rootfs, &target)?;
            (target.clone(), Some(target))
        };
        let shared_rootfs = sandbox.shared_dir.join(guest_spec::shared_rootfs_relative(&task.id));
        mounts::bind(&host_rootfs, &shared_rootfs, false)?;
        for share in shares {
            mounts::bind(
                &share.host_source,
                &sandbox.shared_dir.join(&share.shared_relative),
                share.readonly,
            )?;
        }
        Ok(mounted)
    }

    /// Starts copying the process's stdio once the agent knows the process.
    fn attach_stdio(&self, sandbox: &Sandbox, entry: &ProcessEntry) {
        let process = &entry.process;
        let stdio = &process.stdio;
        for (path, stream) in
            [(&stdio.stdout, OutputStream::Stdout), (&stdio.stderr, OutputStream::Stderr)]
        {
            if !path.is_empty() {
                entry.add_output(spawn_output_copy(
                    sandbox.agent.clone(),
                    process.container_id.clone(),
                    process.exec_id.clone(),
                    stream,
                    PathBuf::from(path),
                    self.logger.clone(),
                ));
            }
        }
        if !stdio.stdin.is_empty() {
            entry.set_stdin(spawn_stdin_copy(
                sandbox.agent.clone(),
                process.container_id.clone(),
                process.exec_id.clone(),
                PathBuf::from(&stdio.stdin),
                self.logger.clone(),
            ));
        }
    }

    /// Runs the container's program, or an exec registered with `exec`.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (container, entry) = self.process(id, exec_id).await?;
        if entry.process.status() != Status::Created {
            return Err(Error::FailedPrecondition(format!(
                "process {id}/{exec_id} was already started"
            )));
        }
        let sandbox = self.sandbox().await?;
        let pid = if exec_id.is_empty() {
            // Host-side, just before the container's process runs (see `hooks`).
            container
                .hooks
                .run(HookKind::StartContainer, id, sandbox.vmm_pid, &container.bundle, &self.logger)
                .await
                .map_err(Error::Internal)?;
            let mut request = StartContainerRequest::new();
            request.container_id = id.to_string();
            sandbox
                .agent
                .start_container(deadline(CONTROL_CALL_TIMEOUT), &request)
                .await
                .map_err(|err| Error::from_agent("StartContainer", err))?
                .pid
        } else {
            let mut request = ExecProcessRequest::new();
            request.container_id = id.to_string();
            request.exec_id = exec_id.to_string();
            request.oci_process_json = entry.exec_spec.clone().unwrap_or_default();
            request.terminal = entry.process.stdio.terminal;
            request.stdin = !entry.process.stdio.stdin.is_empty();
            let pid = sandbox
                .agent
                .exec_process(deadline(CONTROL_CALL_TIMEOUT), &request)
                .await
                .map_err(|err| Error::from_agent("ExecProcess", err))?
                .pid;
            self.attach_stdio(&sandbox, &entry);
            pid
        };
        entry.process.set_running(pid);
        if exec_id.is_empty() {
            // Before start returns (runtime spec); failures are only logged.
            let _ = container
                .hooks
                .run(HookKind::Poststart, id, sandbox.vmm_pid, &container.bundle, &self.logger)
                .await;
            self.emit(Event::Started { container_id: id.to_string(), pid });
        } else {
            self.emit(Event::ExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid,
            });
        }
        self.spawn_exit_watch(&sandbox, entry);
        info!(self.logger, "process started"; "container" => id, "exec" => exec_id, "pid" => pid);
        Ok(pid)
    }

    /// Waits in the guest for the process to exit, lets its output drain, then reports the exit.
    fn spawn_exit_watch(&self, sandbox: &Sandbox, entry: Arc<ProcessEntry>) {
        let agent = sandbox.agent.clone();
        let events = self.events.clone();
        let logger = self.logger.clone();
        tokio::spawn(async move {
            let process = &entry.process;
            let mut request = WaitProcessRequest::new();
            request.container_id = process.container_id.clone();
            request.exec_id = process.exec_id.clone();
            let status = match agent.wait_process(no_deadline(), &request).await {
                Ok(reply) => reply.status as u32,
                Err(err) => {
                    // The guest is gone (VM crash) or the agent failed: report the process dead
                    // so nobody waits forever.
                    warn!(logger, "waiting for the process in the guest failed";
                        "container" => &process.container_id, "exec" => &process.exec_id, "error" => %err);
                    255
                }
            };
            for output in entry.take_outputs() {
                let abort = output.abort_handle();
                if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, output).await.is_err() {
                    warn!(logger, "output still open after exit; closing it";
                        "container" => &process.container_id, "exec" => &process.exec_id);
                    abort.abort();
                }
            }
            entry.close_stdin();
            if let Some(exit) = process.set_exited(status) {
                info!(logger, "process exited"; "container" => &process.container_id,
                    "exec" => &process.exec_id, "status" => status);
                let _ = events.send(Event::Exited {
                    container_id: process.container_id.clone(),
                    exec_id: process.exec_id.clone(),
                    pid: process.pid(),
                    status: exit.status,
                    at: exit.at,
                });
            }
        });
    }

    /// Registers an exec; it runs on `start`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: StdioPaths,
    ) -> Result<()> {
        let container = self.container(id).await?;
        if container.init.process.status() == Status::Stopped {
            return Err(Error::FailedPrecondition(format!("container {id} is not running")));
        }
        serde_json::from_slice::<oci_spec::runtime::Process>(&process_json)
            .map_err(|err| Error::InvalidArgument(format!("invalid exec process spec: {err}")))?;
        let entry = ProcessEntry::new(Process::new(id, exec_id, stdio), Some(process_json));
        if !container.add_exec(exec_id, entry) {
            return Err(Error::AlreadyExists(format!(
                "exec {exec_id} already exists in container {id}"
            )));
        }
        self.emit(Event::ExecAdded { container_id: id.to_string(), exec_id: exec_id.to_string() });
        Ok(())
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let (_, entry) = self.process(id, exec_id).await?;
        if entry.process.status() == Status::Stopped && !all {
            return Err(Error::NotFound(format!("process {id}/{exec_id} already finished")));
        }
        let sandbox = self.sandbox().await?;
        let mut request = SignalProcessRequest::new();
        request.container_id = id.to_string();
        request.exec_id = exec_id.to_string();
        request.signal = signal;
        request.all = all;
        sandbox
            .agent
            .signal_process(deadline(CONTROL_CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::from_agent("SignalProcess", err))?;
        Ok(())
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit> {
        let (_, entry) = self.process(id, exec_id).await?;
        Ok(entry.process.wait().await)
    }

    /// Deletes an exited exec, or the container once its init process is not running.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exit)> {
        let (container, entry) = self.process(id, exec_id).await?;
        if entry.process.status() == Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "process {id}/{exec_id} is running; kill it before deleting it"
            )));
        }
        let exit = match entry.process.exit() {
            Some(exit) => exit,
            None => entry
                .process
                .set_exited(0)
                .unwrap_or(Exit { status: 0, at: std::time::SystemTime::now() }),
        };
        let pid = entry.process.pid();
        if !exec_id.is_empty() {
            container.remove_exec(exec_id);
            return Ok((pid, exit));
        }

        for process in container.all_processes() {
            process.close_stdin();
        }
        let sandbox = self.sandbox().await?;
        let mut request = RemoveContainerRequest::new();
        request.container_id = id.to_string();
        if let Err(err) =
            sandbox.agent.remove_container(deadline(CONTROL_CALL_TIMEOUT), &request).await
        {
            warn!(self.logger, "guest failed to remove the container"; "container" => id, "error" => %err);
        }
        undo_container_mounts(
            &container.shared_root,
            container.mounted_rootfs.is_some(),
            &container.bundle,
            &self.logger,
        );
        self.containers.lock().await.remove(id);
        // After the container is gone, before delete returns (runtime spec); failures are only
        // logged.
        let _ = container
            .hooks
            .run(HookKind::Poststop, id, sandbox.vmm_pid, &container.bundle, &self.logger)
            .await;
        self.emit(Event::Deleted {
            container_id: id.to_string(),
            pid,
            status: exit.status,
            at: exit.at,
        });
        info!(self.logger, "container deleted"; "container" => id);
        Ok((pid, exit))
    }

    pub async fn state(&self, id: &str, exec_id: &str) -> Result<TaskState> {
        let (container, entry) = self.process(id, exec_id).await?;
        let process = &entry.process;
        let status = match process.status() {
            Status::Running if container.is_paused() => Status::Paused,
            other => other,
        };
        Ok(TaskState {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            bundle: container.bundle.clone(),
            pid: process.pid(),
            status,
            stdio: process.stdio.clone(),
            exit: process.exit(),
        })
    }

    pub async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        self.container(id).await?;
        let sandbox = self.sandbox().await?;
        let mut request = ListProcessesRequest::new();
        request.container_id = id.to_string();
        let reply = sandbox
            .agent
            .list_processes(deadline(CONTROL_CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::from_agent("ListProcesses", err))?;
        Ok(reply.pids)
    }

    /// Closes the process's stdin (containerd's CloseIO).
    pub async fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        let (_, entry) = self.process(id, exec_id).await?;
        if entry.finish_stdin() {
            return Ok(());
        }
        if entry.process.status() == Status::Running {
            let sandbox = self.sandbox().await?;
            let mut request = bazaar_protocols::agent::CloseStdinRequest::new();
            request.container_id = id.to_string();
            request.exec_id = exec_id.to_string();
            sandbox
                .agent
                .close_stdin(deadline(CONTROL_CALL_TIMEOUT), &request)
                .await
                .map_err(|err| Error::from_agent("CloseStdin", err))?;
        }
        Ok(())
    }

    pub async fn resize_pty(&self, id: &str, exec_id: &str, columns: u32, rows: u32) -> Result<()> {
        self.process(id, exec_id).await?;
        let sandbox = self.sandbox().await?;
        let mut request = TtyWinResizeRequest::new();
        request.container_id = id.to_string();
        request.exec_id = exec_id.to_string();
        request.columns = columns;
        request.rows = rows;
        sandbox
            .agent
            .tty_win_resize(deadline(CONTROL_CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::from_agent("TtyWinResize", err))?;
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        let container = self.container(id).await?;
        let sandbox = self.sandbox().await?;
        let mut request = PauseContainerRequest::new();
        request.container_id = id.to_string();
        sandbox
            .agent
            .pause_container(deadline(CONTROL_CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::from_agent("PauseContainer", err))?;
        container.set_paused(true);
        self.emit(Event::Paused { container_id: id.to_string() });
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        let container = self.container(id).await?;
        if !container.is_paused() {
            // runc's wording; containerd passes it through to the user.
            return Err(Error::FailedPrecondition("cannot resume a running process".to_string()));
        }
        let sandbox = self.sandbox().await?;
        let mut request = ResumeContainerRequest::new();
        request.container_id = id.to_string();
        sandbox
            .agent
            .resume_container(deadline(CONTROL_CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::from_agent("ResumeContainer", err))?;
        container.set_paused(false);
        self.emit(Event::Resumed { container_id: id.to_string() });
        Ok(())
    }

    /// Applies new resources (OCI LinuxResources as JSON) to the container's cgroup in the guest.
    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        self.container(id).await?;
        let sandbox = self.sandbox().await?;
        let mut request = UpdateContainerRequest::new();
        request.container_id = id.to_string();
        request.oci_resources_json = resources_json;
        sandbox
            .agent
            .update_container(deadline(CONTROL_CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::from_agent("UpdateContainer", err))?;
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<StatsContainerResponse> {
        self.container(id).await?;
        let sandbox = self.sandbox().await?;
        let mut request = StatsContainerRequest::new();
        request.container_id = id.to_string();
        sandbox
            .agent
            .stats_container(deadline(CONTROL_CALL_TIMEOUT), &request)
            .await
            .map_err(|err| Error::from_agent("StatsContainer", err))
    }

    /// The init pid of the sandbox's first container, for containerd's Connect.
    pub async fn task_pid(&self, id: &str) -> u32 {
        match self.container(id).await {
            Ok(container) => container.init.process.pid(),
            Err(_) => 0,
        }
    }

    /// Stops the sandbox if no container is left. Returns whether the shim may exit.
    pub async fn shutdown(&self) -> bool {
        if !self.containers.lock().await.is_empty() {
            return false;
        }
        if let Some(sandbox) = self.sandbox.get() {
            sandbox.stop().await;
        }
        true
    }
}

/// Unmounts what was shared for one container and, if the runtime mounted it, its rootfs.
fn undo_container_mounts(
    shared_root: &Path,
    rootfs_mounted_by_us: bool,
    bundle: &Path,
    logger: &Logger,
) {
    let result = mounts::unmount_all_under(shared_root)
        .and_then(|()| mounts::remove_dir_without_mounts(shared_root));
    if let Err(err) = result {
        warn!(logger, "cleaning the shared directory"; "dir" => %shared_root.display(), "error" => format!("{err:#}"));
    }
    if rootfs_mounted_by_us {
        let rootfs = bundle.join("rootfs");
        if let Err(err) = mounts::unmount_all_under(&rootfs) {
            warn!(logger, "unmounting the rootfs"; "dir" => %rootfs.display(), "error" => format!("{err:#}"));
        }
    }
}

/// The host network namespace the container's spec joins (a path, as CRI gives a pod's
/// CNI-configured namespace); `None` for a new namespace or none at all.
fn joined_netns(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
    namespaces
        .iter()
        .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        .and_then(|ns| ns.path().clone())
        .filter(|path| !path.as_os_str().is_empty())
}
