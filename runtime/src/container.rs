//! A container in a sandbox: host-side mounts, its init process and its execs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::hooks::ContainerHooks;
use crate::io::StdinCopy;
use crate::process::Process;

/// A process plus the host-side plumbing of its stdio.
pub struct ProcessEntry {
    pub process: Arc<Process>,
    /// For an exec: the OCI process (JSON) to run when it is started.
    pub exec_spec: Option<Vec<u8>>,
    pub stdin: Mutex<Option<StdinCopy>>,
    /// The stdout/stderr copies; the exit is reported only after they drained.
    pub outputs: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ProcessEntry {
    pub fn new(process: Process, exec_spec: Option<Vec<u8>>) -> Arc<ProcessEntry> {
        Arc::new(ProcessEntry {
            process: Arc::new(process),
            exec_spec,
            stdin: Mutex::new(None),
            outputs: Mutex::new(Vec::new()),
        })
    }

    pub fn set_stdin(&self, copy: StdinCopy) {
        *self.stdin.lock().unwrap_or_else(|p| p.into_inner()) = Some(copy);
    }

    pub fn add_output(&self, copy: tokio::task::JoinHandle<()>) {
        self.outputs.lock().unwrap_or_else(|p| p.into_inner()).push(copy);
    }

    pub fn take_outputs(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut *self.outputs.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Stops the stdin copy at once (the process exited).
    pub fn close_stdin(&self) {
        if let Some(copy) = self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            copy.close();
        }
    }

    /// CloseIO: the stdin copy ends at the FIFO's end of file and then closes the process's
    /// stdin itself. Returns false when there is no copy (the caller closes stdin directly).
    /// The copy stays here, so that the process's exit still stops it.
    pub fn finish_stdin(&self) -> bool {
        match self.stdin.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(copy) => {
                copy.finish();
                true
            }
            None => false,
        }
    }
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// `<bundle>/rootfs` when this runtime mounted the snapshot there (and must unmount it).
    pub mounted_rootfs: Option<PathBuf>,
    /// `<shared dir>/<id>`: everything shared with the guest for this container.
    pub shared_root: PathBuf,
    pub init: Arc<ProcessEntry>,
    /// The spec's OCI hooks, run on the host at start and delete (see `hooks`).
    pub hooks: ContainerHooks,
    execs: Mutex<HashMap<String, Arc<ProcessEntry>>>,
    /// Frozen by Pause (the guest's cgroup freezer) until Resume.
    paused: std::sync::atomic::AtomicBool,
}

impl Container {
    pub fn new(
        id: String,
        bundle: PathBuf,
        mounted_rootfs: Option<PathBuf>,
        shared_root: PathBuf,
        init: Arc<ProcessEntry>,
        hooks: ContainerHooks,
    ) -> Container {
        Container {
            id,
            bundle,
            mounted_rootfs,
            shared_root,
            init,
            hooks,
            execs: Mutex::new(HashMap::new()),
            paused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ProcessEntry>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The init process for an empty exec id, else the exec.
    pub fn process(&self, exec_id: &str) -> Option<Arc<ProcessEntry>> {
        if exec_id.is_empty() {
            Some(self.init.clone())
        } else {
            self.execs().get(exec_id).cloned()
        }
    }

    /// Adds an exec; false if the id is taken.
    pub fn add_exec(&self, exec_id: &str, entry: Arc<ProcessEntry>) -> bool {
        let mut execs = self.execs();
        if execs.contains_key(exec_id) {
            return false;
        }
        execs.insert(exec_id.to_string(), entry);
        true
    }

    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<ProcessEntry>> {
        self.execs().remove(exec_id)
    }

    pub fn all_processes(&self) -> Vec<Arc<ProcessEntry>> {
        let mut all = vec![self.init.clone()];
        all.extend(self.execs().values().cloned());
        all
    }
}
