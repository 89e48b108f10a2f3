//! One process of a container (its init process or an exec) as the shim tracks it.

use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

/// Where containerd wants the process's stdio (FIFO paths; empty means not wanted).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Lifecycle of a process, as containerd's Task API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
    /// Running, but its container is frozen (reported by the runtime, not stored here).
    Paused,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128+N when ended by signal N (as runc reports it).
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug)]
struct State {
    status: Status,
    pid: u32,
}

/// A process's identity, stdio and state. Its exit is published once through a watch channel so
/// any number of `wait` calls, before or after the exit, see it.
#[derive(Debug)]
pub struct Process {
    pub container_id: String,
    /// Empty for a container's init process.
    pub exec_id: String,
    pub stdio: StdioPaths,
    state: Mutex<State>,
    exit_tx: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(container_id: &str, exec_id: &str, stdio: StdioPaths) -> Process {
        let (exit_tx, _) = watch::channel(None);
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            state: Mutex::new(State { status: Status::Created, pid: 0 }),
            exit_tx,
        }
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of two plain fields;
        // the values are still meaningful.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    pub fn set_running(&self, pid: u32) {
        let mut state = self.lock();
        state.pid = pid;
        state.status = Status::Running;
    }

    /// Records the exit and wakes every waiter. Only the first call counts.
    pub fn set_exited(&self, status: u32) -> Option<Exit> {
        {
            let mut state = self.lock();
            if state.status == Status::Stopped {
                return None;
            }
            state.status = Status::Stopped;
        }
        let exit = Exit { status, at: SystemTime::now() };
        self.exit_tx.send_replace(Some(exit));
        Some(exit)
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            // The sender lives as long as `self`, so this only fails if `self` is gone.
            if rx.changed().await.is_err() {
                return Exit { status: 255, at: SystemTime::now() };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_sees_exit_before_and_after() {
        let process = std::sync::Arc::new(Process::new("c", "", StdioPaths::default()));
        let waiter = {
            let process = process.clone();
            tokio::spawn(async move { process.wait().await })
        };
        process.set_running(42);
        assert_eq!(process.status(), Status::Running);
        assert!(process.set_exited(7).is_some());
        assert!(process.set_exited(9).is_none(), "second exit is ignored");
        assert_eq!(waiter.await.unwrap().status, 7);
        assert_eq!(process.wait().await.status, 7);
        assert_eq!(process.status(), Status::Stopped);
        assert_eq!(process.pid(), 42);
    }
}
