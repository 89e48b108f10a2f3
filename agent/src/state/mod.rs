//! The agent's state. Ownership is layered: [`Agent`] owns the sandbox facts and the container
//! table, each [`Container`] its cgroup and processes, each [`Process`] its exit status and stdio.
//! Locks are per level and held only to look things up, never across a wait.

mod container;
mod process;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use slog::{warn, Logger};

pub use container::{Container, Status};
pub use process::Process;

use crate::config::Config;
use crate::container::cgroups::CgroupRoot;
use crate::error::{Error, Result};
use crate::oom::OomMonitor;
use crate::reaper::Reaper;

/// The whole agent: configuration, reaper, sandbox facts and containers.
pub struct Agent {
    pub config: Arc<Config>,
    pub reaper: Reaper,
    pub oom: Arc<OomMonitor>,
    pub log: Logger,
    /// The sandbox id once CreateSandbox succeeded.
    sandbox: Mutex<Option<String>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids whose CreateContainer is in progress.
    creating: Mutex<HashSet<String>>,
}

/// Keeps a container id reserved while its CreateContainer runs.
pub struct Reservation<'a> {
    agent: &'a Agent,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.agent.creating).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Agent {
    pub fn new(config: Arc<Config>, reaper: Reaper, oom: Arc<OomMonitor>, log: Logger) -> Self {
        Agent {
            config,
            reaper,
            oom,
            log,
            sandbox: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
        }
    }

    /// The cgroup v2 hierarchy for container cgroups, if the configured root is one.
    pub fn cgroup_root(&self) -> Option<CgroupRoot> {
        CgroupRoot::detect(&self.config.cgroup_root)
    }

    pub fn sandbox_id(&self) -> Option<String> {
        lock(&self.sandbox).clone()
    }

    /// Records the sandbox; fails if one exists already.
    pub fn set_sandbox(&self, id: &str) -> Result<()> {
        let mut sandbox = lock(&self.sandbox);
        if let Some(existing) = sandbox.as_ref() {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {existing} is already created"
            )));
        }
        *sandbox = Some(id.to_string());
        Ok(())
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))
    }

    /// Reserves an unused container id for a CreateContainer in progress.
    pub fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        let containers = lock(&self.containers);
        let mut creating = lock(&self.creating);
        if containers.contains_key(id) || !creating.insert(id.to_string()) {
            return Err(Error::AlreadyExists(format!("container {id} already exists")));
        }
        Ok(Reservation { agent: self, id: id.to_string() })
    }

    /// Adds a created container (its reservation is released by the caller's drop).
    pub fn insert(&self, container: Arc<Container>) {
        lock(&self.containers).insert(container.id.clone(), container);
    }

    pub fn forget(&self, id: &str) {
        lock(&self.containers).remove(id);
    }

    pub fn containers(&self) -> Vec<Arc<Container>> {
        lock(&self.containers).values().cloned().collect()
    }

    /// Kills and forgets every container (DestroySandbox, host-mode shutdown).
    pub async fn remove_all_containers(&self) {
        for container in self.containers() {
            if let Err(err) = container.destroy(&self.log).await {
                warn!(self.log, "removing a container failed";
                    "container" => &container.id, "error" => %err);
            }
            self.forget(&container.id);
        }
    }
}
