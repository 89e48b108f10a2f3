//! Running netlink work inside another network namespace. A netlink socket and a tap device
//! belong to the namespace of the thread that creates them, and a tokio worker must never
//! change namespace (other tasks would run there after it), so the work runs on a thread of its
//! own with a single-threaded runtime, and the thread ends with it.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `work` with the calling thread moved into the network namespace at `netns` (a file such
/// as `/var/run/netns/cni-…` or `/proc/<pid>/ns/net`) and returns its result.
pub async fn run_in<T, F, Fut>(netns: &Path, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let netns: PathBuf = netns.to_path_buf();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bazaar-netns".to_string())
        .spawn(move || {
            let _ = done_tx.send(enter_and_run(&netns, work));
        })
        .context("starting a thread for the pod's network namespace")?;
    done_rx.await.map_err(|_| anyhow!("the network namespace thread ended without a result"))?
}

fn enter_and_run<T, F, Fut>(netns: &Path, work: F) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let file = File::open(netns)
        .with_context(|| format!("opening network namespace {}", netns.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", netns.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the network namespace thread's runtime")?;
    runtime.block_on(work())
}

/// Whether `netns` is the namespace this process runs in (the host's, for the shim).
pub fn is_own(netns: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(netns)
        .with_context(|| format!("reading network namespace {}", netns.display()))?;
    let ours = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
}
