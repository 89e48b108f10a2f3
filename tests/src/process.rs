//! Running a command with a deadline and capturing what it printed.
//!
//! On timeout the child is killed by its PID (SIGKILL) and the result says so; nothing here ever
//! signals a process by name.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What a finished (or killed) command left.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// The exit code; `None` when the process was ended by a signal.
    pub code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// True when the deadline passed and the harness killed the process.
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// A multi-line description for assertion messages.
    pub fn describe(&self) -> String {
        let end = if self.timed_out {
            format!("TIMED OUT after {:.1?} and was killed", self.elapsed)
        } else if let Some(sig) = self.signal {
            format!("was killed by signal {sig} after {:.1?}", self.elapsed)
        } else {
            format!("exited with {:?} after {:.1?}", self.code, self.elapsed)
        };
        format!(
            "`{}` {end}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.command, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn assert_success(&self) {
        assert!(self.success(), "command failed: {}", self.describe());
    }
}

/// Runs `cmd` to completion or until `timeout`, feeding it `stdin` (or /dev/null).
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let command = describe_command(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start `{command}`"))?;

    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => {
            let bytes = bytes.to_vec();
            // A child that exits without reading gives EPIPE: that is its business, not ours.
            Some(thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let out_reader = spawn_reader(child.stdout.take());
    let err_reader = spawn_reader(child.stderr.take());

    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            // Child::kill sends SIGKILL to this child's PID.
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    Ok(Output {
        command,
        code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        elapsed,
        timed_out,
    })
}

fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A command running in the background: its output is collected as it comes, its stdin (when
/// asked for) stays open until [`Background::close_stdin`]. Stopped by its PID (SIGKILL) on
/// [`Background::kill`] or drop; never by name.
pub struct Background {
    command: String,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    start: Instant,
    status: Option<std::process::ExitStatus>,
    killed: bool,
}

impl Background {
    /// Starts `cmd` with piped stdout and stderr; stdin is a pipe when `with_stdin`, else
    /// /dev/null.
    pub fn spawn(mut cmd: Command, with_stdin: bool) -> Result<Background> {
        let command = describe_command(&cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if with_stdin { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().with_context(|| format!("cannot start `{command}`"))?;
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(pipe) = child.stdout.take() {
            readers.push(spawn_collector(pipe, stdout.clone()));
        }
        if let Some(pipe) = child.stderr.take() {
            readers.push(spawn_collector(pipe, stderr.clone()));
        }
        let stdin = child.stdin.take();
        Ok(Background {
            command,
            child,
            stdin,
            stdout,
            stderr,
            readers,
            start: Instant::now(),
            status: None,
            killed: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What it printed on stdout so far.
    pub fn stdout_now(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// What it printed on stderr so far.
    pub fn stderr_now(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Writes to its stdin (started `with_stdin`).
    pub fn write_stdin(&mut self, bytes: &[u8]) -> Result<()> {
        let pipe = self.stdin.as_mut().context("stdin is not a pipe (or was closed)")?;
        pipe.write_all(bytes)?;
        pipe.flush()?;
        Ok(())
    }

    /// Closes its stdin: it reads EOF.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// True once it has exited.
    pub fn has_exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    /// Waits up to `timeout` for it to exit (then kills it) and returns what it left.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let mut timed_out = false;
        while !self.has_exited() {
            if self.start.elapsed() >= timeout {
                timed_out = true;
                self.kill();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.finish(timed_out)
    }

    /// SIGKILLs it (by PID) if still running, reaps it and returns what it left.
    pub fn stop(mut self) -> Output {
        if !self.has_exited() {
            self.kill();
        }
        self.finish(false)
    }

    fn kill(&mut self) {
        if self.status.is_none() {
            // Child::kill sends SIGKILL to this child's PID.
            let _ = self.child.kill();
            self.killed = true;
            self.status = self.child.wait().ok();
        }
    }

    fn finish(&mut self, timed_out: bool) -> Output {
        self.stdin = None;
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        let elapsed = self.start.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        use std::os::unix::process::ExitStatusExt;
        Output {
            command: self.command.clone(),
            code: self.status.and_then(|s| s.code()),
            signal: self.status.and_then(|s| s.signal()),
            stdout: self.stdout_now(),
            stderr: self.stderr_now(),
            elapsed,
            timed_out,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stdin = None;
        if !self.has_exited() {
            self.kill();
        }
    }
}

fn spawn_collector<R: Read + Send + 'static>(
    mut pipe: R,
    into: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// `program arg arg ...` for messages.
pub fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Sends `signal` to `pid`. Returns false if the process does not exist.
pub fn signal_pid(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// True when the harness runs as root (the e2e tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_code() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run(cmd, None, Duration::from_secs(10)).unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert!(!out.timed_out);
    }

    #[test]
    fn feeds_stdin() {
        let out = run(Command::new("cat"), Some(b"abc\n"), Duration::from_secs(10)).unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "abc\n");
    }

    #[test]
    fn kills_on_timeout() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let out = run(cmd, None, Duration::from_millis(200)).unwrap();
        assert!(out.timed_out);
        assert!(!out.success());
        assert!(out.elapsed < Duration::from_secs(10));
    }
}
