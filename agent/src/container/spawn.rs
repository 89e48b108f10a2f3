//! The agent's side of creating a container process: start the helper, hand it its setup, and
//! follow the sync socket until the process is ready (init) or exec'd (exec).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context};
use nix::fcntl::OFlag;
use slog::{debug, warn, Logger};

use super::config::{HelperConfig, Mode};
use super::sync::{self, AsyncSyncSocket, Message};
use super::HELPER_SUBCOMMAND;
use crate::error::{Error, Result};
use crate::reaper::{Reaper, Watched};
use crate::stdio::ChildStdio;
use crate::sys;

/// How long the agent waits for a helper or a failed process to go away.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A container process that is set up: ready to start (init) or running (exec).
pub struct Spawned {
    pub watched: Watched,
    /// The sync socket of an init, kept to send `Start`.
    pub sync: Option<AsyncSyncSocket>,
}

/// Creates a container process through the helper.
pub async fn spawn(
    reaper: &Reaper,
    config: &HelperConfig,
    stdio: ChildStdio,
    log: &Logger,
) -> Result<Spawned> {
    let is_init = matches!(config.mode, Mode::Init { .. });
    let config_json = serde_json::to_vec(config).context("failed to encode the helper config")?;
    let (config_read, config_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("failed to create the config pipe")?;
    let (agent_end, helper_end) = sync::pair()?;
    let config_fd = config_read.as_raw_fd();
    let sync_fd = helper_end.as_raw_fd();

    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(HELPER_SUBCOMMAND)
        .arg(config_fd.to_string())
        .arg(sync_fd.to_string())
        .env_clear()
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr));
    // SAFETY: the closure runs between fork and exec and only calls fcntl, which is
    // async-signal-safe; it lets exactly these two fds through the exec.
    unsafe {
        cmd.pre_exec(move || {
            sys::set_cloexec(config_fd, false)?;
            sys::set_cloexec(sync_fd, false)
        });
    }
    let (_child, helper) = reaper.spawn(&mut cmd).context("failed to start the container helper")?;
    // Our copies of the child's ends must close, or end of file never comes.
    drop(cmd);
    drop(config_read);
    drop(helper_end);

    let writer = tokio::task::spawn_blocking(move || {
        std::fs::File::from(config_write).write_all(&config_json)
    });
    let sync = AsyncSyncSocket::new(agent_end)?;

    let mut pid = None;
    let mut watched = None;
    let mut ready = false;
    let mut failure = None;
    loop {
        match sync.recv().await {
            Ok(Some(Message::Pid(p))) => {
                pid = Some(p);
                watched = Some(reaper.watch(p));
            }
            Ok(Some(Message::Ready)) => ready = true,
            Ok(Some(Message::Error(err))) => failure = Some(Error::Setup(err)),
            Ok(Some(Message::Start)) => {
                failure = Some(Error::Internal(anyhow!("unexpected Start from the helper")))
            }
            Ok(None) => break,
            Err(err) => {
                failure = Some(Error::Internal(anyhow!(err).context("sync socket")));
                break;
            }
        }
        if pid.is_some() && (ready || failure.is_some()) {
            break;
        }
    }

    let helper_status = tokio::time::timeout(EXIT_TIMEOUT, helper.exit.wait()).await.ok();
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => debug!(log, "writing the helper config failed"; "error" => %err),
        Err(err) => debug!(log, "config writer task failed"; "error" => %err),
    }

    let (Some(pid), Some(watched)) = (pid, watched) else {
        return Err(failure.unwrap_or_else(|| {
            Error::Internal(anyhow!(
                "the container helper exited with status {} before it started the process",
                helper_status.map_or_else(|| "unknown".to_string(), |s| s.to_string())
            ))
        }));
    };
    if failure.is_none() && is_init && !ready {
        let status = watched.exit.status();
        failure = Some(Error::Internal(anyhow!(
            "the container's init exited during setup (status {})",
            status.map_or_else(|| "unknown".to_string(), |s| s.to_string())
        )));
    }
    if let Some(failure) = failure {
        kill_and_wait(&watched, log).await;
        return Err(failure);
    }
    debug!(log, "container process set up"; "pid" => pid, "init" => is_init);
    Ok(Spawned { watched, sync: is_init.then_some(sync) })
}

/// Tells a ready init to exec its program; returns once it did (or failed to).
pub async fn start(sync: &AsyncSyncSocket) -> Result<()> {
    sync.send(&Message::Start)
        .await
        .context("failed to signal the container's init (did it exit?)")?;
    match sync.recv().await {
        Ok(None) => Ok(()),
        Ok(Some(Message::Error(err))) => Err(Error::Setup(err)),
        Ok(Some(other)) => Err(Error::Internal(anyhow!("unexpected {other:?} from the container's init"))),
        Err(err) => Err(Error::Internal(anyhow!(err).context("sync socket"))),
    }
}

/// Kills a process that failed its setup and waits for it, so that nothing is left behind.
async fn kill_and_wait(watched: &Watched, log: &Logger) {
    if let Err(err) = watched.signal(libc::SIGKILL) {
        if err.raw_os_error() != Some(libc::ESRCH) {
            warn!(log, "failed to kill a failed container process";
                "pid" => watched.pid, "error" => %err);
        }
    }
    if tokio::time::timeout(EXIT_TIMEOUT, watched.exit.wait()).await.is_err() {
        warn!(log, "a failed container process did not exit"; "pid" => watched.pid);
    }
}
