//! One container process (a container's init or an exec'd process).

use crate::reaper::Watched;
use crate::stdio::ProcessIo;

/// A running or exited container process.
pub struct Process {
    /// Empty for the container's init.
    pub exec_id: String,
    watched: Watched,
    pub io: ProcessIo,
}

impl Process {
    pub fn new(exec_id: String, watched: Watched, io: ProcessIo) -> Self {
        Process { exec_id, watched, io }
    }

    /// The pid in the guest's (agent's) PID namespace.
    pub fn pid(&self) -> i32 {
        self.watched.pid
    }

    /// The exit status once the process exited.
    pub fn exit_status(&self) -> Option<i32> {
        self.watched.exit.status()
    }

    /// Waits for the exit status (code, or 128+N for signal N).
    pub async fn wait(&self) -> i32 {
        self.watched.exit.wait().await
    }

    /// Signals the process; `ESRCH` once it exited.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        self.watched.signal(signal)
    }
}
