//! One child process of the backend: spawned, watched by a task that owns it (and so is the only
//! one that reaps it), signalled only through that task, so a signal never reaches a PID that was
//! already reaped and possibly reused.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use command_fds::CommandFdExt;
pub use command_fds::FdMapping;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slog::{debug, warn, Logger};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use crate::console::{forward_output, OutputTail};
use crate::records::process_start_time;
use crate::ProcessRecord;

const SOCKET_POLL: Duration = Duration::from_millis(10);
/// How long a SIGKILLed child may take to be reaped before `terminate` gives up.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long the exit notice waits for the child's output to be read to its end.
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "signal {signal}"),
            (None, None) => write!(f, "unknown status"),
        }
    }
}

/// A handle on a supervised child; clones share the child.
#[derive(Clone)]
pub struct ChildHandle {
    pub name: &'static str,
    pub pid: u32,
    pub start_time: u64,
    signals: mpsc::UnboundedSender<Signal>,
    exit: watch::Receiver<Option<ChildExit>>,
    /// The last lines of the child's stderr (and stdout, where not taken by the caller).
    pub tail: OutputTail,
}

/// What to do with the child's stdout.
pub enum Stdout {
    /// Log it like stderr.
    Log,
    /// Hand it to the caller (QEMU's serial console).
    Take,
}

/// Spawns `program` as a supervised child. Its stdin is /dev/null; stderr is logged under the
/// child's name.
pub fn spawn(
    name: &'static str,
    program: &Path,
    args: &[OsString],
    stdout: Stdout,
    logger: &Logger,
) -> Result<(ChildHandle, Option<ChildStdout>)> {
    spawn_with_fds(name, program, args, stdout, Vec::new(), logger)
}

/// `spawn`, with each of `fds` open in the child under the number it is mapped to.
pub fn spawn_with_fds(
    name: &'static str,
    program: &Path,
    args: &[OsString],
    stdout: Stdout,
    fds: Vec<FdMapping>,
    logger: &Logger,
) -> Result<(ChildHandle, Option<ChildStdout>)> {
    let logger = logger.new(slog::o!("process" => name));
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command.fd_mappings(fds).with_context(|| format!("passing descriptors to {name}"))?;
    let mut child =
        command.spawn().with_context(|| format!("starting {name} ({})", program.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("{name} exited before its PID could be read"))?;
    // Right after spawn the PID is ours (not reaped yet), so this start time is the child's.
    let start_time = process_start_time(pid).unwrap_or(0);
    debug!(logger, "started"; "pid" => pid, "program" => %program.display(),
        "args" => ?args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>());

    let tail = OutputTail::default();
    let mut forwarders = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        forwarders.push(tokio::spawn(forward_output(stderr, logger.clone(), tail.clone())));
    }
    let taken = match stdout {
        Stdout::Take => child.stdout.take(),
        Stdout::Log => {
            if let Some(out) = child.stdout.take() {
                forwarders.push(tokio::spawn(forward_output(out, logger.clone(), tail.clone())));
            }
            None
        }
    };

    let (signal_tx, signal_rx) = mpsc::unbounded_channel();
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(supervise(child, signal_rx, exit_tx, forwarders, logger));
    let handle = ChildHandle { name, pid, start_time, signals: signal_tx, exit: exit_rx, tail };
    Ok((handle, taken))
}

/// Owns the child: reaps it, and forwards signals only while it is not reaped. When every handle
/// is gone the child is killed. The exit is published once the child's output is read to its
/// end (bounded by `OUTPUT_DRAIN`), so error messages built on exit carry its last words.
async fn supervise(
    mut child: Child,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    exit: watch::Sender<Option<ChildExit>>,
    forwarders: Vec<JoinHandle<()>>,
    logger: Logger,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            signal = signals.recv() => match signal {
                Some(signal) => {
                    // `try_wait` returning None means the child is not reaped, so its PID
                    // cannot have been reused.
                    if let (Ok(None), Some(pid)) = (child.try_wait(), child.id()) {
                        let _ = kill(Pid::from_raw(pid as i32), signal);
                    }
                }
                None => {
                    let _ = child.start_kill();
                    break child.wait().await;
                }
            },
        }
    };
    let exit_status = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            ChildExit { code: status.code(), signal: status.signal() }
        }
        Err(err) => {
            slog::warn!(logger, "waiting for the process failed"; "error" => %err);
            ChildExit { code: None, signal: None }
        }
    };
    for forwarder in forwarders {
        // A grandchild holding the pipe open must not delay the exit notice for long.
        let _ = timeout(OUTPUT_DRAIN, forwarder).await;
    }
    debug!(logger, "exited"; "status" => %exit_status);
    exit.send_replace(Some(exit_status));
}

impl ChildHandle {
    /// How the child ended, or `None` while it runs.
    pub fn exited(&self) -> Option<ChildExit> {
        *self.exit.borrow()
    }

    pub fn record(&self) -> ProcessRecord {
        ProcessRecord { name: self.name.to_string(), pid: self.pid, start_time: self.start_time }
    }

    /// Sends `signal` if the child has not been reaped yet.
    pub fn signal(&self, signal: Signal) {
        let _ = self.signals.send(signal);
    }

    /// Waits until the child has exited and been reaped.
    pub async fn wait(&self) -> ChildExit {
        let mut exit = self.exit.clone();
        let result = exit.wait_for(Option::is_some).await.map(|value| *value);
        match result {
            Ok(value) => value.unwrap_or(ChildExit { code: None, signal: None }),
            // The supervisor is gone, which it only is after publishing the exit (or when the
            // runtime shuts down and kill_on_drop ends the child).
            Err(_) => (*exit.borrow()).unwrap_or(ChildExit { code: None, signal: None }),
        }
    }

    /// Waits up to `limit` for the child to exit.
    pub async fn wait_timeout(&self, limit: Duration) -> Option<ChildExit> {
        timeout(limit, self.wait()).await.ok()
    }

    /// SIGTERM, `grace` to exit, then SIGKILL. Idempotent.
    pub async fn terminate(&self, grace: Duration) -> Result<ChildExit> {
        if let Some(exit) = self.exited() {
            return Ok(exit);
        }
        self.signal(Signal::SIGTERM);
        self.kill_after(grace).await
    }

    /// Waits `grace` for the child to exit by itself, then SIGKILLs it.
    pub async fn kill_after(&self, grace: Duration) -> Result<ChildExit> {
        if let Some(exit) = self.wait_timeout(grace).await {
            return Ok(exit);
        }
        self.signal(Signal::SIGKILL);
        self.wait_timeout(KILL_WAIT).await.ok_or_else(|| {
            anyhow!("{} (pid {}) survived SIGKILL for {KILL_WAIT:?}", self.name, self.pid)
        })
    }

    /// Waits until `path` exists. Fails early, with the child's last output, if the child exits.
    pub async fn wait_for_path(&self, path: &Path, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if path.exists() {
                return Ok(());
            }
            if let Some(exit) = self.exited() {
                bail!(
                    "{} exited ({exit}) before creating {}: {}",
                    self.name,
                    path.display(),
                    self.tail.summary()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not create {} within {limit:?}: {}",
                    self.name,
                    self.pid,
                    path.display(),
                    self.tail.summary()
                );
            }
            sleep(SOCKET_POLL).await;
        }
    }
}

pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

pub fn remove_files(paths: &[PathBuf], logger: &Logger) {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(logger, "removing a socket"; "path" => %path.display(), "error" => %err)
            }
        }
    }
}

/// The command line as one string for the log (shell quoting where needed).
pub fn command_line(program: &Path, args: &[OsString]) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=,./:+@".contains(&b))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logger() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[tokio::test]
    async fn terminate_ends_a_child_and_is_idempotent() {
        let (child, _) =
            spawn("sleep", Path::new("/bin/sleep"), &["30".into()], Stdout::Log, &logger())
                .unwrap();
        assert!(child.start_time > 0);
        assert!(child.exited().is_none());
        let exit = child.terminate(Duration::from_secs(2)).await.unwrap();
        assert_eq!(exit.signal, Some(libc::SIGTERM));
        assert_eq!(child.terminate(Duration::from_secs(2)).await.unwrap(), exit);
        assert!(
            !Path::new(&format!("/proc/{}", child.pid)).exists()
                || crate::records::process_start_time(child.pid).unwrap_or(0) != child.start_time
        );
    }

    #[tokio::test]
    async fn sigkill_follows_an_ignored_sigterm() {
        let args: Vec<OsString> =
            vec!["-c".into(), "trap '' TERM; echo ready; sleep 30 & wait".into()];
        let (child, _) =
            spawn("stubborn", Path::new("/bin/sh"), &args, Stdout::Log, &logger()).unwrap();
        // Let the shell install its trap.
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.tail.summary() != "ready" && Instant::now() < deadline {
            sleep(Duration::from_millis(10)).await;
        }
        let exit = child.terminate(Duration::from_millis(200)).await.unwrap();
        assert_eq!(exit.signal, Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn waiting_for_a_path_reports_an_early_exit_with_output() {
        let args: Vec<OsString> = vec!["-c".into(), "echo 'bad option --frob' >&2; exit 3".into()];
        let (child, _) =
            spawn("helper", Path::new("/bin/sh"), &args, Stdout::Log, &logger()).unwrap();
        let err = child
            .wait_for_path(Path::new("/nonexistent/x.sock"), Duration::from_secs(5))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("helper exited (exit code 3)"), "{message}");
        assert!(message.contains("bad option --frob"), "{message}");
    }

    #[tokio::test]
    async fn dropping_every_handle_kills_the_child() {
        let (child, _) =
            spawn("sleep", Path::new("/bin/sleep"), &["30".into()], Stdout::Log, &logger())
                .unwrap();
        let record = child.record();
        let exit = child.exit.clone();
        drop(child);
        let mut exit = exit;
        let status =
            timeout(Duration::from_secs(5), exit.wait_for(Option::is_some)).await.unwrap().unwrap();
        assert_eq!(status.unwrap().signal, Some(libc::SIGKILL));
        assert!(crate::records::process_start_time(record.pid).unwrap_or(0) != record.start_time);
    }
}
