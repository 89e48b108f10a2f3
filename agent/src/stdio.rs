//! Stdio of container processes: pipes, or one pseudo terminal when `terminal` is set.
//!
//! The agent keeps the reading ends of stdout and stderr (the master of a terminal) and the
//! writing end of stdin. Output stays in the pipe (or the terminal's buffer) until the runtime
//! reads it, also after the process exited; a read returns empty data only at end of stream, i.e.
//! once every writer (the process and any children it passed the fd to) closed it and the
//! buffer is drained.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;

use crate::sys;

/// Upper bound of one read, whatever the caller asks for.
const MAX_READ: usize = 1 << 20;
/// The size of a read when the caller asks for 0 bytes.
const DEFAULT_READ: usize = 32 << 10;

/// The agent's side of a process's stdio.
pub struct ProcessIo {
    stdin: Mutex<Option<AsyncStream>>,
    stdout: Mutex<AsyncStream>,
    /// `None` with a terminal: its output is merged into stdout.
    stderr: Option<Mutex<AsyncStream>>,
    /// The terminal's master, for window size changes.
    pty: Option<OwnedFd>,
}

/// The agent's side of stdio while the process is being created.
pub enum PendingIo {
    /// Pipes: complete already (boxed: far larger than the terminal variant).
    Ready(Box<ProcessIo>),
    /// A terminal: complete once the process sent its pty master.
    Terminal { stdin: bool },
}

impl PendingIo {
    /// Completes the stdio with the terminal master the process sent (`None` for pipes).
    pub fn finish(self, console: Option<OwnedFd>) -> anyhow::Result<ProcessIo> {
        match (self, console) {
            (PendingIo::Ready(io), None) => Ok(*io),
            (PendingIo::Terminal { stdin }, Some(master)) => {
                ProcessIo::from_terminal(master, stdin)
            }
            (PendingIo::Ready(_), Some(_)) => anyhow::bail!("a terminal was sent for pipe stdio"),
            (PendingIo::Terminal { .. }, None) => anyhow::bail!("no terminal was sent"),
        }
    }
}

/// The process's side, handed to the helper as fds 0, 1 and 2.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl ProcessIo {
    /// Creates the stdio of a new process. Without `stdin` the process reads `/dev/null`. With
    /// a terminal the process opens the pty itself, in its container's devpts (so that it is a
    /// /dev/pts/N there, as under runc), and sends the master back: the helper starts on
    /// `/dev/null` and [`PendingIo::finish`] takes the master.
    pub fn create(terminal: bool, stdin: bool) -> anyhow::Result<(PendingIo, ChildStdio)> {
        if terminal {
            let null = || -> anyhow::Result<OwnedFd> {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .context("failed to open /dev/null")?;
                Ok(OwnedFd::from(file))
            };
            let child = ChildStdio { stdin: null()?, stdout: null()?, stderr: null()? };
            return Ok((PendingIo::Terminal { stdin }, child));
        }
        let (stdin_child, stdin_ours) = if stdin {
            let (read, write) = pipe()?;
            (read, Some(AsyncStream::new(write)?))
        } else {
            let null = File::open("/dev/null").context("failed to open /dev/null")?;
            (OwnedFd::from(null), None)
        };
        let (stdout_ours, stdout_child) = output_pipe()?;
        let (stderr_ours, stderr_child) = output_pipe()?;
        let io = ProcessIo {
            stdin: Mutex::new(stdin_ours),
            stdout: Mutex::new(AsyncStream::new(stdout_ours)?),
            stderr: Some(Mutex::new(AsyncStream::new(stderr_ours)?)),
            pty: None,
        };
        let child = ChildStdio { stdin: stdin_child, stdout: stdout_child, stderr: stderr_child };
        Ok((PendingIo::Ready(Box::new(io)), child))
    }

    /// The agent's side of a terminal whose master the container process sent.
    fn from_terminal(master: OwnedFd, stdin: bool) -> anyhow::Result<ProcessIo> {
        let dup = |fd: &OwnedFd| fd.try_clone().context("failed to duplicate a terminal fd");
        let writer = if stdin { Some(AsyncStream::new(dup(&master)?)?) } else { None };
        Ok(ProcessIo {
            stdin: Mutex::new(writer),
            stdout: Mutex::new(AsyncStream::new(dup(&master)?)?),
            stderr: None,
            pty: Some(master),
        })
    }

    /// Writes all of `data` to stdin. Fails when stdin was not requested or is closed.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, StdioError> {
        let guard = self.stdin.lock().await;
        let stream = guard.as_ref().ok_or(StdioError::StdinClosed)?;
        stream.write_all(data).await.map_err(|err| match err.raw_os_error() {
            Some(libc::EPIPE) => StdioError::StdinClosed,
            _ => StdioError::Io(err),
        })?;
        Ok(data.len())
    }

    /// Closes stdin so that the process reads end of file. With a terminal the agent only stops
    /// writing: the terminal stays open for output.
    pub async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }

    /// Reads at most `len` bytes of stdout, waiting for at least one; empty means end of stream.
    pub async fn read_stdout(&self, len: usize) -> io::Result<Vec<u8>> {
        self.stdout.lock().await.read(len).await
    }

    /// Like [`Self::read_stdout`]; with a terminal stderr is always at end of stream.
    pub async fn read_stderr(&self, len: usize) -> io::Result<Vec<u8>> {
        match &self.stderr {
            Some(stderr) => stderr.lock().await.read(len).await,
            None => Ok(Vec::new()),
        }
    }

    /// Sets the terminal's window size; `None` when the process has no terminal.
    pub fn resize(&self, rows: u16, columns: u16) -> Option<io::Result<()>> {
        self.pty.as_ref().map(|pty| sys::set_winsize(pty.as_fd(), rows, columns))
    }
}

/// Why a stdio operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// stdin is closed (never opened, closed by CloseStdin, or the process closed its end)
    #[error("stdin is closed")]
    StdinClosed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe")
}

/// Capacity asked for output pipes: each ReadStdout round trip to the host costs milliseconds
/// under emulation, so one read should move much more than the default 64 KiB.
const OUTPUT_PIPE_SIZE: libc::c_int = 1 << 20;

/// A pipe for stdout or stderr, enlarged to [`OUTPUT_PIPE_SIZE`] where the kernel allows it
/// (best effort: the default size works, only slower).
fn output_pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = pipe()?;
    let _ = nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE));
    Ok((read, write))
}

/// A non-blocking fd (pipe end or terminal master) driven by tokio.
struct AsyncStream {
    fd: AsyncFd<OwnedFd>,
    eof: bool,
}

impl AsyncStream {
    fn new(fd: OwnedFd) -> anyhow::Result<Self> {
        let fd = sys::register_async(fd).context("failed to register a stdio fd")?;
        Ok(AsyncStream { fd, eof: false })
    }

    async fn read(&mut self, len: usize) -> io::Result<Vec<u8>> {
        if self.eof {
            return Ok(Vec::new());
        }
        let len = if len == 0 { DEFAULT_READ } else { len.min(MAX_READ) };
        let mut buf = vec![0u8; len];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    if n == 0 {
                        self.eof = true;
                    }
                    buf.truncate(n);
                    return Ok(buf);
                }
                // A terminal master reports EIO once the slave side is gone and drained.
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => {
                    self.eof = true;
                    return Ok(Vec::new());
                }
                Ok(Err(err)) if err.raw_os_error() == Some(Errno::EINTR as i32) => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(err)) if err.raw_os_error() == Some(Errno::EINTR as i32) => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}
