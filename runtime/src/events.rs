//! Lifecycle events the runtime emits, in the order they happened; the shim forwards them to
//! containerd as TaskCreate, TaskStart, TaskExit and so on.

use std::time::SystemTime;

use crate::process::StdioPaths;

#[derive(Debug, Clone)]
pub enum Event {
    Created {
        container_id: String,
        bundle: String,
        pid: u32,
        stdio: StdioPaths,
    },
    Started {
        container_id: String,
        pid: u32,
    },
    ExecAdded {
        container_id: String,
        exec_id: String,
    },
    ExecStarted {
        container_id: String,
        exec_id: String,
        pid: u32,
    },
    Exited {
        container_id: String,
        exec_id: String,
        pid: u32,
        status: u32,
        at: SystemTime,
    },
    Deleted {
        container_id: String,
        pid: u32,
        status: u32,
        at: SystemTime,
    },
    Paused {
        container_id: String,
    },
    Resumed {
        container_id: String,
    },
    /// The container's memory limit was hit and the guest kernel killed a process in it.
    Oom {
        container_id: String,
    },
}

pub type EventSender = tokio::sync::mpsc::UnboundedSender<Event>;
pub type EventReceiver = tokio::sync::mpsc::UnboundedReceiver<Event>;
