//! What every backend does the same way around its VMM process: publishing how the VM ended,
//! noticing the VMM's exit, and reporting or killing the processes it started.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::signal::Signal;
use slog::{warn, Logger};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::process::{remove_files, ChildHandle};
use crate::{ProcessRecord, VmExit};

/// How the VM ended, set once, for `wait` and `exit_receiver`.
#[derive(Clone)]
pub(crate) struct ExitCell(Arc<watch::Sender<Option<VmExit>>>);

impl ExitCell {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }

    /// Records `exit`, replacing nothing: the first exit recorded is the one reported.
    pub fn publish(&self, exit: VmExit) {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(exit);
                true
            } else {
                false
            }
        });
    }

    /// Resolves once an exit is recorded.
    pub async fn wait(&self) -> VmExit {
        let mut exit = self.0.subscribe();
        let result = match exit.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            Err(_) => None,
        };
        // The sender lives as long as `self`, so the error arm is unreachable in practice.
        result.unwrap_or(VmExit::Stopped)
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<VmExit>> {
        self.0.subscribe()
    }
}

/// Spawns the task that waits for `vmm` to exit, runs `cleanup` (ending the helpers, removing
/// sockets) and then records the exit: `Stopped` when `stopping` was set, else how it ended.
pub(crate) fn spawn_monitor<F, Fut>(
    vmm: ChildHandle,
    stopping: Arc<AtomicBool>,
    exit: ExitCell,
    logger: Logger,
    cleanup: F,
) -> JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    tokio::spawn(async move {
        let status = vmm.wait().await;
        let vm_exit = if stopping.load(Ordering::SeqCst) {
            VmExit::Stopped
        } else {
            warn!(logger, "VM exited by itself"; "status" => %status);
            VmExit::Exited { code: status.code, signal: status.signal }
        };
        if let Err(err) = cleanup().await {
            warn!(logger, "ending the helpers after the VM exit"; "error" => format!("{err:#}"));
        }
        exit.publish(vm_exit);
    })
}

/// The records of the children still running.
pub(crate) fn live_records<'a>(
    children: impl Iterator<Item = &'a ChildHandle>,
) -> Vec<ProcessRecord> {
    children.filter(|c| c.exited().is_none()).map(ChildHandle::record).collect()
}

/// The best a backend's `Drop` can do when `stop` was not called: SIGKILL every child still
/// running (through its supervisor, so only our own unreaped children are hit) and remove the
/// sockets.
pub(crate) fn kill_now<'a>(
    children: impl Iterator<Item = &'a ChildHandle>,
    sockets: &[PathBuf],
    stopping: &AtomicBool,
    logger: &Logger,
) {
    stopping.store(true, Ordering::SeqCst);
    for child in children {
        if child.exited().is_none() {
            child.signal(Signal::SIGKILL);
        }
    }
    remove_files(sockets, logger);
}
