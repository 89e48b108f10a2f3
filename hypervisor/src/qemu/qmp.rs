//! Just enough of the QEMU Machine Protocol to ask whether the VM runs and to make QEMU quit.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::timeout;

/// A QMP session after capability negotiation.
pub struct Qmp {
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability negotiation mode.
    pub async fn connect(socket: &Path, limit: Duration) -> Result<Qmp> {
        timeout(limit, async {
            let stream = connect_when_listening(socket).await?;
            let mut qmp = Qmp { reader: BufReader::new(stream) };
            // An event (RESUME as the VM starts) can come before the greeting on a connection
            // made as QEMU starts: skip events until the greeting.
            let greeting = loop {
                let message = qmp
                    .read_message()
                    .await?
                    .ok_or_else(|| anyhow!("QMP closed before its greeting"))?;
                if message.get("event").is_none() {
                    break message;
                }
            };
            if greeting.get("QMP").is_none() {
                bail!("unexpected QMP greeting {greeting}");
            }
            qmp.execute("qmp_capabilities").await?;
            Ok(qmp)
        })
        .await
        .map_err(|_| anyhow!("no QMP session on {} within {limit:?}", socket.display()))?
    }

    /// Runs `command` (no arguments) and returns its `return` value.
    pub async fn execute(&mut self, command: &str) -> Result<Value> {
        self.request(command).await?.ok_or_else(|| anyhow!("QMP closed before answering {command}"))
    }

    /// Asks QEMU to quit. QEMU may close the connection before its answer arrives, which
    /// counts as success.
    pub async fn quit(mut self) -> Result<()> {
        self.request("quit").await.map(|_| ())
    }

    /// Sends `command`; its `return` value, or `None` when QEMU closed the connection first.
    async fn request(&mut self, command: &str) -> Result<Option<Value>> {
        let mut request = json!({ "execute": command }).to_string();
        request.push('\n');
        self.reader.get_mut().write_all(request.as_bytes()).await.context("writing to QMP")?;
        while let Some(message) = self.read_message().await? {
            if let Some(value) = message.get("return") {
                return Ok(Some(value.clone()));
            }
            if let Some(error) = message.get("error") {
                bail!("QMP {command} failed: {error}");
            }
            // Anything else is an asynchronous event; skip it.
        }
        Ok(None)
    }

    async fn read_message(&mut self) -> Result<Option<Value>> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await.context("reading from QMP")? == 0 {
                return Ok(None);
            }
            if !line.trim().is_empty() {
                break;
            }
        }
        serde_json::from_str(line.trim())
            .map(Some)
            .with_context(|| format!("unparsable QMP message {line:?}"))
    }
}

/// Connects to QEMU's QMP socket. QEMU creates the socket file (`bind`) a moment before it
/// listens, so a refused connection is retried briefly (the caller bounds the whole wait).
async fn connect_when_listening(socket: &Path) -> Result<UnixStream> {
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("connecting to QMP socket {}", socket.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn negotiates_skips_events_and_reads_the_return() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            stream
                .get_mut()
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .await
                .unwrap();
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            assert!(line.contains("qmp_capabilities"));
            stream.get_mut().write_all(b"{\"return\": {}}\r\n").await.unwrap();
            line.clear();
            stream.read_line(&mut line).await.unwrap();
            assert!(line.contains("query-status"));
            stream
                .get_mut()
                .write_all(
                    b"{\"event\": \"RESUME\"}\r\n{\"return\": {\"status\": \"running\"}}\r\n",
                )
                .await
                .unwrap();
            line.clear();
            stream.read_line(&mut line).await.unwrap();
            assert!(line.contains("quit"));
            // QEMU exits without answering.
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let status = qmp.execute("query-status").await.unwrap();
        assert_eq!(status["status"], "running");
        qmp.quit().await.unwrap();
        server.await.unwrap();
    }
}
