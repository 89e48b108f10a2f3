//! One container: its cgroup, its init and its exec'd processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::anyhow;
use slog::{debug, warn, Logger};

use super::process::Process;
use crate::container::cgroups::Cgroup;
use crate::container::spawn;
use crate::container::sync::AsyncSyncSocket;
use crate::error::{Error, Result};

/// How long RemoveContainer waits for killed processes.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Set up, waiting for StartContainer.
    Created,
    Running,
    Paused,
    /// The init exited.
    Stopped,
}

pub struct Container {
    pub id: String,
    /// `None` where the agent has no cgroup v2 hierarchy (host test mode on a v1 host).
    pub cgroup: Option<Cgroup>,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The init's sync socket until StartContainer used it.
    start: tokio::sync::Mutex<Option<AsyncSyncSocket>>,
    started: AtomicBool,
    paused: AtomicBool,
}

impl Container {
    pub fn new(id: String, cgroup: Option<Cgroup>, init: Process, start: AsyncSyncSocket) -> Self {
        Container {
            id,
            cgroup,
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
            start: tokio::sync::Mutex::new(Some(start)),
            started: AtomicBool::new(false),
            paused: AtomicBool::new(false),
        }
    }

    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn status(&self) -> Status {
        if self.init.exit_status().is_some() {
            Status::Stopped
        } else if !self.started.load(Ordering::SeqCst) {
            Status::Created
        } else if self.paused.load(Ordering::SeqCst) {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// The init (empty `exec_id`) or an exec'd process.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs().get(exec_id).cloned().ok_or_else(|| Error::ProcessNotFound {
            container_id: self.id.clone(),
            exec_id: exec_id.to_string(),
        })
    }

    /// Fails if an exec id is taken (checked before the exec is created).
    pub fn check_exec_id(&self, exec_id: &str) -> Result<()> {
        if exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec_id must not be empty".to_string()));
        }
        if self.execs().contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!(
                "process {exec_id:?} already exists in container {}",
                self.id
            )));
        }
        Ok(())
    }

    pub fn add_exec(&self, process: Arc<Process>) -> Result<()> {
        let mut execs = self.execs();
        if execs.contains_key(&process.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "process {:?} already exists in container {}",
                process.exec_id, self.id
            )));
        }
        execs.insert(process.exec_id.clone(), process);
        Ok(())
    }

    /// Lets the init exec its program; returns its pid.
    pub async fn start(&self) -> Result<i32> {
        let mut start = self.start.lock().await;
        let Some(sync) = start.as_ref() else {
            return Err(Error::FailedPrecondition(format!(
                "container {} is already started",
                self.id
            )));
        };
        if self.init.exit_status().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {} cannot start: its init exited",
                self.id
            )));
        }
        let result = spawn::start(sync).await;
        // Whatever happened, the socket has served its purpose.
        start.take();
        self.started.store(true, Ordering::SeqCst);
        result.map(|()| self.init.pid())
    }

    pub async fn set_paused(&self, paused: bool) -> Result<()> {
        let cgroup = self.require_cgroup()?;
        match self.status() {
            Status::Running | Status::Paused => {}
            status => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is {status:?}, not running",
                    self.id
                )))
            }
        }
        cgroup.freeze(paused).await?;
        self.paused.store(paused, Ordering::SeqCst);
        Ok(())
    }

    pub fn require_cgroup(&self) -> Result<&Cgroup> {
        self.cgroup.as_ref().ok_or_else(|| {
            Error::FailedPrecondition("cgroup v2 is not available to the agent".to_string())
        })
    }

    /// The pids of the container: its cgroup's, or without cgroups its known live processes.
    pub fn pids(&self) -> Result<Vec<u32>> {
        if let Some(cgroup) = &self.cgroup {
            return Ok(cgroup.pids()?);
        }
        let mut pids = vec![self.init.clone()];
        pids.extend(self.execs().values().cloned());
        Ok(pids
            .iter()
            .filter(|process| process.exit_status().is_none())
            .map(|process| process.pid() as u32)
            .collect())
    }

    /// Sends a signal to every process of the container.
    pub fn signal_all(&self, signal: i32) -> Result<()> {
        if let Some(cgroup) = &self.cgroup {
            cgroup.signal_all(signal)?;
        }
        // Without a cgroup (and as a safety net) the processes the agent knows.
        let mut processes = vec![self.init.clone()];
        processes.extend(self.execs().values().cloned());
        for process in processes {
            let _ = process.signal(signal);
        }
        Ok(())
    }

    /// Kills every process, waits for them, and removes the cgroup. The container's mounts live
    /// in its own mount namespace and disappear with its last process.
    pub async fn destroy(&self, log: &Logger) -> Result<()> {
        if self.paused.load(Ordering::SeqCst) {
            if let Some(cgroup) = &self.cgroup {
                let _ = cgroup.freeze(false).await;
            }
        }
        if let Some(cgroup) = &self.cgroup {
            if let Err(err) = cgroup.kill_all() {
                warn!(log, "cgroup kill failed"; "container" => &self.id, "error" => format!("{err:#}"));
            }
        }
        self.signal_all(libc::SIGKILL)?;
        // A created container's init waits on this socket; closing it also ends it.
        self.start.lock().await.take();

        let mut processes = vec![self.init.clone()];
        processes.extend(self.execs().values().cloned());
        for process in processes {
            if tokio::time::timeout(KILL_TIMEOUT, process.wait()).await.is_err() {
                return Err(Error::Internal(anyhow!(
                    "process {} (pid {}) of container {} did not exit after SIGKILL",
                    if process.exec_id.is_empty() { "init" } else { process.exec_id.as_str() },
                    process.pid(),
                    self.id
                )));
            }
        }
        if let Some(cgroup) = &self.cgroup {
            // Processes outside the agent's view (e.g. forked by an exec without a PID
            // namespace) are still going; kill again until the cgroup is empty.
            let _ = cgroup.kill_all();
            if let Err(err) = cgroup.remove().await {
                warn!(log, "removing the cgroup failed"; "container" => &self.id, "error" => format!("{err:#}"));
            }
        }
        debug!(log, "container destroyed"; "container" => &self.id);
        Ok(())
    }
}
