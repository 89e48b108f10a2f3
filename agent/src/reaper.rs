//! The reaper: the one place that calls `waitpid`.
//!
//! Every container process ends up a child of the agent (PID 1 in the guest, a child subreaper on
//! a host), so the agent must reap them all, its own helpers included. On SIGCHLD the reaper
//! collects every exit with `waitpid(-1, WNOHANG)` and hands the status to whoever watches that
//! pid. Statuses nobody watches yet are kept for a while, because a process can exit before the
//! agent learns its pid (the helper reports it over a socket).
//!
//! Pid reuse: `waitpid` runs with the reaper's lock held, and [`Reaper::watch`] checks whether the
//! pid is still alive under the same lock, so a stale status of an earlier process with the same
//! pid is never handed to the new one.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use slog::{debug, warn, Logger};
use tokio::sync::watch;

use crate::sys;

/// How long the exit status of a pid that nobody watches is kept.
const UNCLAIMED_TTL: Duration = Duration::from_secs(300);

/// Hands out exit statuses of the agent's children and adopted orphans.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
    log: Logger,
}

#[derive(Default)]
struct Inner {
    /// Exit statuses of pids nobody watched yet, with the time they were reaped.
    unclaimed: HashMap<i32, (i32, Instant)>,
    /// Watched pids that are still running.
    watchers: HashMap<i32, watch::Sender<Option<i32>>>,
}

/// A watched process: its exit status once known, and a pidfd to signal it safely.
pub struct Watched {
    pub pid: i32,
    pub exit: ExitWatch,
    pidfd: Option<OwnedFd>,
}

impl Watched {
    /// Sends a signal (0 only checks) to the process. A process that exited gives `ESRCH`; with
    /// a pidfd a reused pid can never be hit.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        if self.exit.status().is_some() {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        match &self.pidfd {
            Some(pidfd) => sys::pidfd_send_signal(pidfd.as_fd(), signal),
            None => sys::kill(self.pid, signal),
        }
    }
}

/// The exit status of one process, which any number of tasks can wait for.
#[derive(Clone)]
pub struct ExitWatch(watch::Receiver<Option<i32>>);

impl ExitWatch {
    fn exited(status: i32) -> Self {
        ExitWatch(watch::channel(Some(status)).1)
    }

    /// The exit status if the process has exited.
    pub fn status(&self) -> Option<i32> {
        *self.0.borrow()
    }

    /// Waits for the exit status (a shell's `$?`: the code, or 128+N for signal N).
    pub async fn wait(&self) -> i32 {
        let mut rx = self.0.clone();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(status) => status.unwrap_or(255),
            // The reaper dropped the sender without a status: treat as a lost process.
            Err(_) => self.status().unwrap_or(255),
        };
        status
    }
}

impl Reaper {
    /// Starts the reaper task. `subreaper` makes this process a child subreaper first (host mode;
    /// PID 1 gets every orphan anyway).
    pub fn start(log: Logger, subreaper: bool) -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        if subreaper {
            sys::set_child_subreaper().context("failed to become a child subreaper")?;
        }
        let mut sigchld = signal(SignalKind::child()).context("failed to watch SIGCHLD")?;
        let reaper = Reaper { inner: Arc::new(Mutex::new(Inner::default())), log };
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap();
                // A timeout as well, so that a coalesced or lost signal only delays reaping.
                let _ = tokio::time::timeout(Duration::from_secs(5), sigchld.recv()).await;
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind; keep using them.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns a child and watches it. The lock is held across the spawn so that the reaper cannot
    /// reap a child that `std` itself waits for when its exec fails.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, Watched)> {
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let watched = Self::watch_locked(&mut inner, child.id() as i32);
        Ok((child, watched))
    }

    /// Watches a descendant whose pid the agent just learned.
    pub fn watch(&self, pid: i32) -> Watched {
        let mut inner = self.lock();
        Self::watch_locked(&mut inner, pid)
    }

    fn watch_locked(inner: &mut Inner, pid: i32) -> Watched {
        if let Some(sender) = inner.watchers.get(&pid) {
            return Watched {
                pid,
                exit: ExitWatch(sender.subscribe()),
                pidfd: sys::pidfd_open(pid).ok(),
            };
        }
        // Under the lock nothing is reaped, so an existing process (zombie or not) is the one the
        // caller means, and any unclaimed status for its pid belongs to an earlier process.
        if let Ok(pidfd) = sys::pidfd_open(pid) {
            inner.unclaimed.remove(&pid);
            let (sender, receiver) = watch::channel(None);
            inner.watchers.insert(pid, sender);
            return Watched { pid, exit: ExitWatch(receiver), pidfd: Some(pidfd) };
        }
        let alive = sys::kill(pid, 0).is_ok();
        if alive {
            // No pidfd support (kernel < 5.3): watch without one.
            inner.unclaimed.remove(&pid);
            let (sender, receiver) = watch::channel(None);
            inner.watchers.insert(pid, sender);
            return Watched { pid, exit: ExitWatch(receiver), pidfd: None };
        }
        // Already reaped: the newest status for this pid is this process's.
        let status = inner.unclaimed.remove(&pid).map(|(status, _)| status).unwrap_or(255);
        Watched { pid, exit: ExitWatch::exited(status), pidfd: None }
    }

    /// Reaps every exited child.
    fn reap(&self) {
        let mut inner = self.lock();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    let Some(code) = exit_code(&status) else { continue };
                    let Some(pid) = status.pid() else { continue };
                    let pid = pid.as_raw();
                    debug!(self.log, "reaped"; "pid" => pid, "status" => code);
                    match inner.watchers.remove(&pid) {
                        Some(sender) => {
                            let _ = sender.send(Some(code));
                        }
                        None => {
                            inner.unclaimed.insert(pid, (code, Instant::now()));
                        }
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    warn!(self.log, "waitpid failed"; "error" => %err);
                    break;
                }
            }
        }
        let now = Instant::now();
        inner.unclaimed.retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
    }
}

/// The exit status as a shell reports it: the exit code, or 128+N for death by signal N.
/// `None` for wait statuses that are not an exit (stopped, continued).
pub fn exit_code(status: &WaitStatus) -> Option<i32> {
    match *status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_status_mapping() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit_code(&WaitStatus::Exited(pid, 0)), Some(0));
        assert_eq!(exit_code(&WaitStatus::Exited(pid, 7)), Some(7));
        assert_eq!(exit_code(&WaitStatus::Signaled(pid, Signal::SIGKILL, false)), Some(137));
        assert_eq!(exit_code(&WaitStatus::Signaled(pid, Signal::SIGTERM, true)), Some(143));
        assert_eq!(exit_code(&WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
        assert_eq!(exit_code(&WaitStatus::Continued(pid)), None);
    }

    #[test]
    fn exit_watch_reports_a_known_status() {
        let watch = ExitWatch::exited(3);
        assert_eq!(watch.status(), Some(3));
    }
}
