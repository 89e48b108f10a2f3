//! Commands timed from spawn to exit, stopped by a deadline or by Ctrl-C.
//!
//! [`crate::process::run`] polls for the child's exit every 20 ms, too coarse for a 100 ms `ctr
//! run` under runc. Here the caller blocks in `waitid(WNOWAIT)` (woken by the exit itself, and
//! the child stays unreaped, so its PID cannot be reused), while a watchdog thread kills the
//! child by PID when the deadline passes or the benchmark is interrupted.
//!
//! [`install_interrupt_handler`] turns SIGINT, SIGTERM and SIGHUP into a flag: the benchmark stops
//! starting commands, ends the one running and tears down (everything it started, by PID)
//! instead of dying with sandboxes left running.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::process::describe_command;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set the interrupt flag instead of ending the process.
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; `sa` is a
        // zeroed sigaction with the handler and an empty mask filled in before the call.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once the benchmark has been interrupted.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    check_interrupt()
}

/// What to do with the child's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutMode {
    /// Keep it as text.
    Capture,
    /// Count the bytes and note when the first and last arrived (throughput).
    Count,
}

#[derive(Debug, Clone)]
pub struct Timed {
    pub command: String,
    /// Wall-clock time of the spawn (to line up with log timestamps).
    pub started_at: SystemTime,
    /// From just before spawn to the exit.
    pub elapsed: Duration,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Bytes read from stdout.
    pub bytes: u64,
    /// From the first to the last byte of stdout.
    pub transfer: Option<Duration>,
    pub timed_out: bool,
}

impl Timed {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// Errors unless the command succeeded, quoting what it printed.
    pub fn check(self) -> Result<Timed> {
        if self.success() {
            return Ok(self);
        }
        let how = if self.timed_out {
            format!("timed out after {:.1?}", self.elapsed)
        } else {
            format!("exited with {:?}", self.code)
        };
        bail!(
            "`{}` {how}\nstdout: {}\nstderr: {}",
            self.command,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `cmd` (stdin /dev/null) until it exits, `timeout` passes or the benchmark is interrupted.
pub fn run(mut cmd: Command, stdout: StdoutMode, timeout: Duration) -> Result<Timed> {
    check_interrupt()?;
    let command = describe_command(&cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started_at = SystemTime::now();
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start `{command}`"))?;
    let pid = child.id() as libc::pid_t;

    let mut out_pipe = child.stdout.take().expect("piped");
    let out_reader = thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let (mut bytes, mut first, mut last) = (0u64, None, None);
        loop {
            match out_pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = Some(now);
                    bytes += n as u64;
                    if stdout == StdoutMode::Capture {
                        text.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        let transfer = first.zip(last).map(|(f, l)| l - f);
        (String::from_utf8_lossy(&text).into_owned(), bytes, transfer)
    });
    let mut err_pipe = child.stderr.take().expect("piped");
    let err_reader = thread::spawn(move || {
        let mut text = Vec::new();
        let _ = err_pipe.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });

    // `exited` is set (under the lock) before the child is reaped, so the watchdog never signals
    // a PID that could belong to someone else.
    let exited = Arc::new(Mutex::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (exited, timed_out) = (exited.clone(), timed_out.clone());
        thread::spawn(move || loop {
            thread::sleep(Duration::from_millis(25));
            let done = exited.lock().unwrap();
            if *done {
                return;
            }
            let late = start.elapsed() >= timeout;
            if late || interrupted() {
                timed_out.store(late, Ordering::SeqCst);
                // SAFETY: kill(2) with plain integers; the child is not reaped yet (see above).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return;
            }
        })
    };
    wait_no_reap(pid)?;
    let elapsed = start.elapsed();
    *exited.lock().unwrap() = true;
    let status = child.wait()?;
    let _ = watchdog.join();
    let (stdout, bytes, transfer) = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if interrupted() {
        bail!("interrupted while running `{command}`");
    }
    Ok(Timed {
        command,
        started_at,
        elapsed,
        code: status.code(),
        stdout,
        stderr,
        bytes,
        transfer,
        timed_out: timed_out.load(Ordering::SeqCst),
    })
}

/// Blocks until `pid` (our child) has exited, leaving it to be reaped by the caller.
fn wait_no_reap(pid: libc::pid_t) -> Result<()> {
    loop {
        // SAFETY: waitid(2) on our own child with a zeroed siginfo buffer it fills in.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waitid");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_captures() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 0.1; echo out; echo err >&2; exit 3"]);
        let t = run(cmd, StdoutMode::Capture, Duration::from_secs(10)).unwrap();
        assert_eq!(t.code, Some(3));
        assert_eq!(t.stdout, "out\n");
        assert_eq!(t.stderr, "err\n");
        assert!(t.elapsed >= Duration::from_millis(100), "{:?}", t.elapsed);
        assert!(t.elapsed < Duration::from_secs(5));
        assert!(!t.success());
    }

    #[test]
    fn counts_bytes() {
        let mut cmd = Command::new("head");
        cmd.args(["-c", "1000000", "/dev/zero"]);
        let t = run(cmd, StdoutMode::Count, Duration::from_secs(10)).unwrap().check().unwrap();
        assert_eq!(t.bytes, 1_000_000);
        assert!(t.stdout.is_empty());
        assert!(t.transfer.is_some());
    }

    #[test]
    fn kills_on_deadline() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let t = run(cmd, StdoutMode::Capture, Duration::from_millis(200)).unwrap();
        assert!(t.timed_out);
        assert!(t.elapsed < Duration::from_secs(5));
        assert!(t.check().is_err());
    }
}
