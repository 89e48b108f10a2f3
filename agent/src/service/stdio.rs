//! WriteStdin, ReadStdout, ReadStderr, CloseStdin, TtyWinResize.

use anyhow::Context;
use bazaar_protocols::agent::{
    CloseStdinRequest, Empty, ReadStreamRequest, ReadStreamResponse, TtyWinResizeRequest,
    WriteStreamRequest, WriteStreamResponse,
};

use crate::error::{Error, Result};
use crate::state::Agent;
use crate::stdio::StdioError;

/// Which output stream to read.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Writes all the data to the process's stdin.
pub async fn write_stdin(agent: &Agent, req: &WriteStreamRequest) -> Result<WriteStreamResponse> {
    let process = agent.container(&req.container_id)?.process(&req.exec_id)?;
    let len = process.io.write_stdin(&req.data).await.map_err(|err| match err {
        StdioError::StdinClosed => Error::FailedPrecondition(format!(
            "stdin of process {:?} of container {} is closed",
            req.exec_id, req.container_id
        )),
        StdioError::Io(err) => Error::Internal(anyhow::Error::from(err).context("write stdin")),
    })?;
    let mut response = WriteStreamResponse::new();
    response.len = len as u32;
    Ok(response)
}

/// Reads up to `len` bytes, waiting for at least one; empty data is end of stream.
pub async fn read(
    agent: &Agent,
    req: &ReadStreamRequest,
    stream: Stream,
) -> Result<ReadStreamResponse> {
    let process = agent.container(&req.container_id)?.process(&req.exec_id)?;
    let len = req.len as usize;
    let data = match stream {
        Stream::Stdout => process.io.read_stdout(len).await,
        Stream::Stderr => process.io.read_stderr(len).await,
    }
    .with_context(|| format!("read {stream:?}"))?;
    let mut response = ReadStreamResponse::new();
    response.data = data;
    Ok(response)
}

pub async fn close_stdin(agent: &Agent, req: &CloseStdinRequest) -> Result<Empty> {
    let process = agent.container(&req.container_id)?.process(&req.exec_id)?;
    process.io.close_stdin().await;
    Ok(Empty::new())
}

pub fn resize(agent: &Agent, req: &TtyWinResizeRequest) -> Result<Empty> {
    let process = agent.container(&req.container_id)?.process(&req.exec_id)?;
    let rows = u16::try_from(req.rows).unwrap_or(u16::MAX);
    let columns = u16::try_from(req.columns).unwrap_or(u16::MAX);
    match process.io.resize(rows, columns) {
        Some(result) => result.context("TIOCSWINSZ")?,
        None => {
            return Err(Error::FailedPrecondition(format!(
                "process {:?} of container {} has no terminal",
                req.exec_id, req.container_id
            )))
        }
    }
    Ok(Empty::new())
}
