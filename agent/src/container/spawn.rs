//! The agent's side of creating a container process: start the helper, hand it its setup, and
//! follow the sync socket until the process is ready (init) or exec'd (exec).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context};
use nix::fcntl::OFlag;
use oci_spec::runtime::LinuxSeccomp;
use slog::{debug, warn, Logger};

use super::config::{HelperConfig, HelperInputRef, Mode};
use super::sync::{self, AsyncSyncSocket, Message, Received};
use super::{launcher, HELPER_SUBCOMMAND};
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
    /// The master of the process's terminal (`terminal` set), opened by the process itself in
    /// the container's devpts.
    pub console: Option<OwnedFd>,
}

/// Creates a container process through the helper.
pub async fn spawn(
    reaper: &Reaper,
    config: &HelperConfig,
    stdio: ChildStdio,
    log: &Logger,
) -> Result<Spawned> {
    let is_init = matches!(config.mode, Mode::Init { .. });
    let seccomp = match &config.mode {
        Mode::Init { spec, .. } => spec.linux().as_ref().and_then(|linux| linux.seccomp().clone()),
        Mode::Exec { init_pid } => profiles::of(*init_pid)?,
    };
    let input = HelperInputRef { config, seccomp: seccomp.as_ref() };
    let config_json = serde_json::to_vec(&input).context("failed to encode the helper config")?;
    let (config_read, config_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("failed to create the config pipe")?;
    let (agent_end, helper_end) = sync::pair()?;
    // The launcher forks the helper; the re-exec is the fallback when there is none (or it died).
    let launched = match launcher::get() {
        Some(launcher) => match launcher.launch(&stdio, &config_read, &helper_end) {
            Ok(()) => true,
            Err(err) => {
                warn!(log, "the launcher is gone; re-executing the helper"; "error" => %err);
                false
            }
        },
        None => false,
    };
    let helper = if launched {
        drop(stdio);
        None
    } else {
        Some(exec_helper(reaper, stdio, &config_read, &helper_end)?)
    };
    // Our copies of the child's ends must close, or end of file never comes.
    drop(config_read);
    drop(helper_end);

    let writer = tokio::task::spawn_blocking(move || {
        std::fs::File::from(config_write).write_all(&config_json)
    });
    let sync = AsyncSyncSocket::new(agent_end)?;

    let mut pid = None;
    let mut watched = None;
    let mut ready = false;
    let mut console = None;
    let mut failure = None;
    loop {
        match sync.recv().await {
            Ok(Some(Received { message: Message::Pid(p), .. })) => {
                pid = Some(p);
                watched = Some(reaper.watch(p));
            }
            Ok(Some(Received { message: Message::Ready, .. })) => ready = true,
            Ok(Some(Received { message: Message::Console, fd })) => match fd {
                Some(fd) if config.terminal => console = Some(fd),
                _ => {
                    failure = Some(Error::Internal(anyhow!(
                        "unexpected Console message (terminal {}, fd attached {})",
                        config.terminal,
                        fd.is_some()
                    )))
                }
            },
            Ok(Some(Received { message: Message::Error(err), .. })) => {
                failure = Some(Error::Setup(err))
            }
            Ok(Some(Received { message: Message::Start, .. })) => {
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

    let helper_status = match &helper {
        Some(helper) => tokio::time::timeout(EXIT_TIMEOUT, helper.exit.wait()).await.ok(),
        // A launched helper is the launcher's child, reaped there.
        None => None,
    };
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => debug!(log, "writing the helper config failed"; "error" => %err),
        Err(err) => debug!(log, "config writer task failed"; "error" => %err),
    }

    let (Some(pid), Some(watched)) = (pid, watched) else {
        return Err(failure.unwrap_or_else(|| {
            Error::Internal(match helper_status {
                Some(status) => anyhow!(
                    "the container helper exited with status {status} before it started the \
                     process"
                ),
                None => anyhow!("the container helper ended before it started the process"),
            })
        }));
    };
    if failure.is_none() && is_init && !ready {
        let status = watched.exit.status();
        failure = Some(Error::Internal(anyhow!(
            "the container's init exited during setup (status {})",
            status.map_or_else(|| "unknown".to_string(), |s| s.to_string())
        )));
    }
    if failure.is_none() && config.terminal && console.is_none() {
        failure = Some(Error::Internal(anyhow!(
            "the container process asked for a terminal but sent none"
        )));
    }
    if let Some(failure) = failure {
        kill_and_wait(&watched, log).await;
        return Err(failure);
    }
    debug!(log, "container process set up"; "pid" => pid, "init" => is_init);
    if is_init {
        profiles::register(pid, seccomp);
    }
    Ok(Spawned { watched, sync: is_init.then_some(sync), console })
}

/// Starts the helper by re-executing the agent binary (`/proc/self/exe __init-container`).
fn exec_helper(
    reaper: &Reaper,
    stdio: ChildStdio,
    config_read: &OwnedFd,
    helper_end: &OwnedFd,
) -> Result<Watched> {
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
    let (_child, helper) =
        reaper.spawn(&mut cmd).context("failed to start the container helper")?;
    Ok(helper)
}

/// Tells a ready init to exec its program; returns once it did (or failed to).
pub async fn start(sync: &AsyncSyncSocket) -> Result<()> {
    sync.send(&Message::Start)
        .await
        .context("failed to signal the container's init (did it exit?)")?;
    match sync.recv().await {
        Ok(None) => Ok(()),
        Ok(Some(Received { message: Message::Error(err), .. })) => Err(Error::Setup(err)),
        Ok(Some(other)) => Err(Error::Internal(anyhow!(
            "unexpected {:?} from the container's init",
            other.message
        ))),
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

/// The seccomp profile of each container, by the pid of its init, for the processes exec'd into
/// it later (their process spec has no `linux.seccomp`). An entry is only valid while the same
/// process holds the pid (its start time is compared), and stale entries go when the next
/// container registers.
///
/// This belongs with the container's state (`state::Container`); it is kept here so that the
/// exec path needs nothing from the RPC layer beyond the init's pid.
mod profiles {
    use super::*;

    struct Registered {
        pid: i32,
        start_time: u64,
        profile: Option<LinuxSeccomp>,
    }

    static PROFILES: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

    /// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
    fn start_time(pid: i32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(19)?.parse().ok()
    }

    pub fn register(pid: i32, profile: Option<LinuxSeccomp>) {
        let Some(start_time) = start_time(pid) else { return };
        let mut profiles = PROFILES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        profiles.retain(|r| r.pid != pid && start_time_matches(r));
        profiles.push(Registered { pid, start_time, profile });
    }

    fn start_time_matches(r: &Registered) -> bool {
        start_time(r.pid) == Some(r.start_time)
    }

    /// The profile of the container whose init has `init_pid`.
    pub fn of(init_pid: i32) -> Result<Option<LinuxSeccomp>> {
        let profiles = PROFILES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        profiles
            .iter()
            .find(|r| r.pid == init_pid && start_time_matches(r))
            .map(|r| r.profile.clone())
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "the container's init (pid {init_pid}) is gone or was not created by this agent"
                ))
            })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn profiles_follow_the_process_not_the_pid() {
            let me = std::process::id() as i32;
            assert!(start_time(me).is_some());
            let profile: LinuxSeccomp =
                serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
            register(me, Some(profile.clone()));
            assert_eq!(of(me).unwrap(), Some(profile));
            register(me, None);
            assert_eq!(of(me).unwrap(), None);
            // A record whose start time no longer matches is not used.
            PROFILES.lock().unwrap().iter_mut().for_each(|r| r.start_time += 1);
            assert!(of(me).is_err());
        }
    }
}
