//! ExecProcess, SignalProcess, WaitProcess, ListProcesses.

use std::sync::Arc;

use bazaar_protocols::agent::{
    Empty, ExecProcessRequest, ExecProcessResponse, ListProcessesRequest, ListProcessesResponse,
    SignalProcessRequest, WaitProcessRequest, WaitProcessResponse,
};
use slog::info;

use crate::container::config::{HelperConfig, Mode};
use crate::container::spawn;
use crate::error::{Error, Result};
use crate::state::{Agent, Process, Status};
use crate::stdio::ProcessIo;

/// Runs a new process in a running container's namespaces, root and cgroup.
pub async fn exec(agent: &Agent, req: &ExecProcessRequest) -> Result<ExecProcessResponse> {
    let container = agent.container(&req.container_id)?;
    container.check_exec_id(&req.exec_id)?;
    match container.status() {
        Status::Running => {}
        status => {
            return Err(Error::FailedPrecondition(format!(
                "cannot exec in container {}: it is {status:?}, not running",
                req.container_id
            )))
        }
    }
    let process: oci_spec::runtime::Process = serde_json::from_slice(&req.oci_process_json)
        .map_err(|err| Error::InvalidArgument(format!("invalid OCI process: {err}")))?;
    let (pending_io, child_stdio) = ProcessIo::create(req.terminal, req.stdin)?;
    let config = HelperConfig {
        process,
        terminal: req.terminal,
        cgroup_procs: container.cgroup.as_ref().map(|cgroup| cgroup.procs_file()),
        mode: Mode::Exec { init_pid: container.init.pid() },
    };
    let log = agent
        .log
        .new(slog::o!("container" => req.container_id.clone(), "exec" => req.exec_id.clone()));
    let mut spawned = spawn::spawn(&agent.reaper, &config, child_stdio, &log).await?;
    let io = pending_io.finish(spawned.console.take())?;
    let pid = spawned.watched.pid;
    container.add_exec(Arc::new(Process::new(req.exec_id.clone(), spawned.watched, io)))?;
    info!(log, "process exec'd"; "pid" => pid);
    let mut response = ExecProcessResponse::new();
    response.pid = pid as u32;
    Ok(response)
}

/// Signals one process, or with `all` every process of the container.
pub fn signal(agent: &Agent, req: &SignalProcessRequest) -> Result<Empty> {
    let container = agent.container(&req.container_id)?;
    let process = container.process(&req.exec_id)?;
    let signal = i32::try_from(req.signal)
        .ok()
        .filter(|signal| (0..=64).contains(signal))
        .ok_or_else(|| Error::InvalidArgument(format!("invalid signal {}", req.signal)))?;
    if req.all {
        container.signal_all(signal)?;
        return Ok(Empty::new());
    }
    match process.signal(signal) {
        Ok(()) => Ok(Empty::new()),
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Err(Error::NotFound(format!(
            "process {:?} of container {} already finished",
            req.exec_id, req.container_id
        ))),
        Err(err) => {
            Err(Error::Internal(anyhow::Error::from(err).context(format!("signal {signal}"))))
        }
    }
}

/// Waits for a process to exit; any number of callers, before or after the exit.
pub async fn wait(agent: &Agent, req: &WaitProcessRequest) -> Result<WaitProcessResponse> {
    let process = agent.container(&req.container_id)?.process(&req.exec_id)?;
    let mut response = WaitProcessResponse::new();
    response.status = process.wait().await;
    Ok(response)
}

pub fn list(agent: &Agent, req: &ListProcessesRequest) -> Result<ListProcessesResponse> {
    let mut response = ListProcessesResponse::new();
    response.pids = agent.container(&req.container_id)?.pids()?;
    Ok(response)
}
