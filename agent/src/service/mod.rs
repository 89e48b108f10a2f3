//! The ttrpc `AgentService`: a thin trait impl that hands each RPC to its domain module and
//! turns the outcome into a ttrpc status (logging failures once, here).

mod container;
mod process;
mod sandbox;
mod stats;
mod stdio;

use std::sync::Arc;

use async_trait::async_trait;
use bazaar_protocols::agent::*;
use bazaar_protocols::agent_ttrpc::AgentService;
use slog::{debug, warn};
use ttrpc::r#async::TtrpcContext;

use crate::error::{Error, Result};
use crate::state::Agent;

/// The agent's implementation of the generated service trait.
pub struct AgentServiceImpl {
    agent: Arc<Agent>,
}

impl AgentServiceImpl {
    pub fn new(agent: Arc<Agent>) -> Self {
        AgentServiceImpl { agent }
    }

    /// Logs a failed RPC and converts the result for ttrpc.
    /// `id` is the container (or sandbox) the request names.
    fn reply<T>(&self, rpc: &'static str, id: &str, result: Result<T>) -> ttrpc::Result<T> {
        if let Err(err) = &result {
            let log = &self.agent.log;
            match err {
                Error::ContainerNotFound(_) | Error::ProcessNotFound { .. } => {
                    debug!(log, "rpc failed"; "rpc" => rpc, "id" => id, "error" => %err)
                }
                _ => warn!(log, "rpc failed";
                    "rpc" => rpc, "id" => id, "code" => ?err.code(), "error" => %err),
            }
        }
        result.map_err(Into::into)
    }
}

#[async_trait]
impl AgentService for AgentServiceImpl {
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let result = sandbox::create(&self.agent, &req).await;
        self.reply("CreateSandbox", &req.sandbox_id, result)
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let result = sandbox::destroy(&self.agent, &req).await;
        self.reply("DestroySandbox", &req.sandbox_id, result)
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let result = container::create(&self.agent, &req).await;
        self.reply("CreateContainer", &req.container_id, result)
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        let result = container::start(&self.agent, &req).await;
        self.reply("StartContainer", &req.container_id, result)
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let result = container::remove(&self.agent, &req).await;
        self.reply("RemoveContainer", &req.container_id, result)
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let result = container::set_paused(&self.agent, &req.container_id, true).await;
        self.reply("PauseContainer", &req.container_id, result)
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let result = container::set_paused(&self.agent, &req.container_id, false).await;
        self.reply("ResumeContainer", &req.container_id, result)
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let result = container::update(&self.agent, &req);
        self.reply("UpdateContainer", &req.container_id, result)
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let result = stats::stats(&self.agent, &req);
        self.reply("StatsContainer", &req.container_id, result)
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let result = process::list(&self.agent, &req);
        self.reply("ListProcesses", &req.container_id, result)
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let result = process::exec(&self.agent, &req).await;
        self.reply("ExecProcess", &req.container_id, result)
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let result = process::signal(&self.agent, &req);
        self.reply("SignalProcess", &req.container_id, result)
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let result = process::wait(&self.agent, &req).await;
        self.reply("WaitProcess", &req.container_id, result)
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        let result = stdio::write_stdin(&self.agent, &req).await;
        self.reply("WriteStdin", &req.container_id, result)
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let result = stdio::read(&self.agent, &req, stdio::Stream::Stdout).await;
        self.reply("ReadStdout", &req.container_id, result)
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let result = stdio::read(&self.agent, &req, stdio::Stream::Stderr).await;
        self.reply("ReadStderr", &req.container_id, result)
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        let result = stdio::close_stdin(&self.agent, &req).await;
        self.reply("CloseStdin", &req.container_id, result)
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let result = stdio::resize(&self.agent, &req);
        self.reply("TtyWinResize", &req.container_id, result)
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        match self.agent.oom.next().await {
            Some(container_id) => {
                let mut event = OOMEvent::new();
                event.container_id = container_id;
                Ok(event)
            }
            None => self.reply(
                "GetOOMEvent",
                "",
                Err(Error::Internal(anyhow::anyhow!("the OOM monitor has stopped"))),
            ),
        }
    }

    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        Ok(sandbox::check())
    }

    async fn version(&self, _: &TtrpcContext, _: VersionRequest) -> ttrpc::Result<VersionResponse> {
        Ok(sandbox::version())
    }
}
