//! Stdio between containerd's FIFOs and a process in the guest, through the agent's stream calls.
//!
//! Output: ReadStdout/ReadStderr block in the guest until data or end of stream, and each chunk
//! is written to containerd's FIFO; end of stream closes the FIFO, which is how `ctr` learns the
//! output is complete. Input: the stdin FIFO is read on a blocking thread (opening a FIFO blocks
//! until containerd opens its end) and each chunk is sent with WriteStdin; end of file on the FIFO
//! becomes CloseStdin, so the process sees EOF.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bazaar_protocols::agent::{CloseStdinRequest, ReadStreamRequest, WriteStreamRequest};
use bazaar_protocols::agent_ttrpc::AgentServiceClient;
use slog::{debug, warn, Logger};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::agent_client::{deadline, no_deadline, CONTROL_CALL_TIMEOUT};

/// Largest read asked of the guest per ReadStdout/ReadStderr (the agent's pipes hold 1 MiB):
/// every round trip costs milliseconds under emulation.
const CHUNK: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Copies one output stream of a guest process into a FIFO until the guest reports its end.
pub fn spawn_output_copy(
    agent: AgentServiceClient,
    container_id: String,
    exec_id: String,
    stream: OutputStream,
    fifo: PathBuf,
    logger: Logger,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(err) = copy_output(&agent, &container_id, &exec_id, stream, &fifo).await {
            warn!(logger, "output copy ended with an error";
                "container" => &container_id, "exec" => &exec_id,
                "stream" => ?stream, "error" => format!("{err:#}"));
        }
    })
}

async fn copy_output(
    agent: &AgentServiceClient,
    container_id: &str,
    exec_id: &str,
    stream: OutputStream,
    fifo: &std::path::Path,
) -> Result<()> {
    let mut sink = open_fifo_for_writing(fifo).await?;
    let mut request = ReadStreamRequest::new();
    request.container_id = container_id.to_string();
    request.exec_id = exec_id.to_string();
    request.len = CHUNK;
    loop {
        let reply = match stream {
            OutputStream::Stdout => agent.read_stdout(no_deadline(), &request).await,
            OutputStream::Stderr => agent.read_stderr(no_deadline(), &request).await,
        }
        .with_context(|| format!("reading {stream:?} from the guest"))?;
        if reply.data.is_empty() {
            return Ok(()); // end of stream: dropping `sink` closes the FIFO
        }
        sink = tokio::task::spawn_blocking(move || -> Result<std::fs::File> {
            sink.write_all(&reply.data).context("writing to containerd's FIFO")?;
            Ok(sink)
        })
        .await
        .context("FIFO writer thread failed")??;
    }
}

async fn open_fifo_for_writing(fifo: &std::path::Path) -> Result<std::fs::File> {
    let path = fifo.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("opening output FIFO {}", path.display()))
    })
    .await
    .context("FIFO open thread failed")?
}

/// The stdin copy of one process. Dropping it does not stop the copy; call `finish` or `close`.
pub struct StdinCopy {
    fifo: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl StdinCopy {
    /// containerd's CloseIO: the client has no more input. What it wrote still reaches the
    /// process, which sees EOF once the client's end of the FIFO is closed too (as with runc's
    /// shim). `ctr` calls CloseIO when its own stdin ends, before the FIFO is drained, so
    /// stopping here would lose the tail of the input.
    pub fn finish(&self) {
        self.release_open();
    }

    /// Stops the copy now (the process is gone): what is still in the FIFO is dropped.
    pub fn close(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.release_open();
    }

    /// A reader still blocked in `open` (no client ever opened the FIFO for writing) is
    /// released by opening the write end ourselves and closing it: its `open` returns, and
    /// its `read` sees EOF unless a client holds the write end open as well.
    fn release_open(&self) {
        let _ =
            std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.fifo);
    }
}

/// Copies containerd's stdin FIFO into the guest process until EOF, then closes its stdin.
pub fn spawn_stdin_copy(
    agent: AgentServiceClient,
    container_id: String,
    exec_id: String,
    fifo: PathBuf,
    logger: Logger,
) -> StdinCopy {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    {
        let fifo = fifo.clone();
        let stop = stop.clone();
        let logger = logger.clone();
        std::thread::spawn(move || {
            if let Err(err) = read_fifo(&fifo, &tx, &stop) {
                debug!(logger, "stdin FIFO reader ended"; "error" => format!("{err:#}"));
            }
        });
    }
    tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            let mut request = WriteStreamRequest::new();
            request.container_id = container_id.clone();
            request.exec_id = exec_id.clone();
            request.data = data;
            if let Err(err) = agent.write_stdin(no_deadline(), &request).await {
                debug!(logger, "stdin write to the guest failed"; "error" => %err);
                return;
            }
        }
        let mut request = CloseStdinRequest::new();
        request.container_id = container_id;
        request.exec_id = exec_id;
        if let Err(err) = agent.close_stdin(deadline(CONTROL_CALL_TIMEOUT), &request).await {
            debug!(logger, "closing stdin in the guest failed"; "error" => %err);
        }
    });
    StdinCopy { fifo, stop }
}

fn read_fifo(
    fifo: &std::path::Path,
    tx: &mpsc::Sender<Vec<u8>>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let mut source = std::fs::File::open(fifo)
        .with_context(|| format!("opening stdin FIFO {}", fifo.display()))?;
    let mut buf = vec![0u8; CHUNK as usize];
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let n = source.read(&mut buf).context("reading stdin FIFO")?;
        if n == 0 || stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if tx.blocking_send(buf[..n].to_vec()).is_err() {
            return Ok(());
        }
    }
}
