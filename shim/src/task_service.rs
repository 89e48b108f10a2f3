//! containerd's Task API (containerd.task.v2.Task) mapped onto the runtime's `Tasks`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bazaar_runtime::config::Config;
use bazaar_runtime::process::StdioPaths;
use bazaar_runtime::tasks::{CreateTask, Tasks};
use bazaar_runtime::Error;
use containerd_shim::api::*;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{TtrpcContext, TtrpcResult};
use slog::{debug, Logger};

use crate::convert;

pub struct TaskService {
    tasks: Arc<Tasks>,
    /// A configuration that failed to load, reported by every Create.
    config_error: Option<String>,
    exit: Arc<ExitSignal>,
    logger: Logger,
}

impl TaskService {
    pub fn new(
        sandbox_id: String,
        namespace: String,
        config: Config,
        config_error: Option<String>,
        events_address: &str,
        exit: Arc<ExitSignal>,
        logger: Logger,
    ) -> TaskService {
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let publisher =
            crate::publisher::Publisher::new(events_address, &namespace, logger.clone());
        tokio::spawn(publisher.forward(events_rx));
        let tasks = Arc::new(Tasks::new(&sandbox_id, config, logger.clone(), events_tx));
        TaskService { tasks, config_error, exit, logger }
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        debug!(self.logger, "create"; "container" => &req.id, "bundle" => &req.bundle);
        if let Some(err) = &self.config_error {
            return Err(Error::InvalidArgument(err.clone()).into());
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented(
                "restoring from a checkpoint is not supported".into(),
            )
            .into());
        }
        let task = CreateTask {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            rootfs: convert::rootfs_mounts(&req.rootfs),
            stdio: StdioPaths {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
            },
        };
        let pid = self.tasks.create(task).await?;
        let mut response = CreateTaskResponse::new();
        response.pid = pid;
        Ok(response)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = self.tasks.start(&req.id, &req.exec_id).await?;
        let mut response = StartResponse::new();
        response.pid = pid;
        Ok(response)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let state = self.tasks.state(&req.id, &req.exec_id).await?;
        let mut response = StateResponse::new();
        response.id = state.id;
        response.exec_id = state.exec_id;
        response.bundle = state.bundle.display().to_string();
        response.pid = state.pid;
        response.status = convert::task_status(state.status).into();
        response.stdin = state.stdio.stdin;
        response.stdout = state.stdio.stdout;
        response.stderr = state.stdio.stderr;
        response.terminal = state.stdio.terminal;
        if let Some(exit) = state.exit {
            response.exit_status = exit.status;
            response.exited_at = Some(convert::timestamp(exit.at)).into();
        }
        Ok(response)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let exit = self.tasks.wait(&req.id, &req.exec_id).await?;
        let mut response = WaitResponse::new();
        response.exit_status = exit.status;
        response.exited_at = Some(convert::timestamp(exit.at)).into();
        Ok(response)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.tasks.kill(&req.id, &req.exec_id, req.signal, req.all).await?;
        Ok(Empty::new())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let (pid, exit) = self.tasks.delete(&req.id, &req.exec_id).await?;
        let mut response = DeleteResponse::new();
        response.pid = pid;
        response.exit_status = exit.status;
        response.exited_at = Some(convert::timestamp(exit.at)).into();
        Ok(response)
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec =
            req.spec.as_ref().map(|any| any.value.clone()).ok_or_else(|| {
                Error::InvalidArgument("exec request carries no process spec".into())
            })?;
        let stdio = StdioPaths {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        self.tasks.exec(&req.id, &req.exec_id, spec, stdio).await?;
        Ok(Empty::new())
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self.tasks.pids(&req.id).await?;
        let mut response = PidsResponse::new();
        response.processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = ProcessInfo::new();
                info.pid = pid;
                info
            })
            .collect();
        Ok(response)
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.tasks.close_io(&req.id, &req.exec_id).await?;
        }
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.tasks.resize_pty(&req.id, &req.exec_id, req.width, req.height).await?;
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.tasks.pause(&req.id).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.tasks.resume(&req.id).await?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources = req.resources.as_ref().map(|any| any.value.clone()).unwrap_or_default();
        self.tasks.update(&req.id, resources).await?;
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let stats = self.tasks.stats(&req.id).await?;
        let any = convert::metrics(&stats).map_err(Error::Internal)?;
        let mut response = StatsResponse::new();
        response.stats = Some(any).into();
        Ok(response)
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(Error::Unimplemented("checkpoint is not supported by the bazaar runtime".into()).into())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let mut response = ConnectResponse::new();
        response.shim_pid = std::process::id();
        response.task_pid = self.tasks.task_pid(&req.id).await;
        Ok(response)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.tasks.shutdown().await {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
