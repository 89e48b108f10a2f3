//! A client of containerd's CRI streaming server: the URLs that Exec, Attach and PortForward
//! return, spoken to over WebSocket as the kubelet's streaming library (vendored in containerd
//! 1.6) accepts it besides SPDY.
//!
//! - exec/attach: subprotocol `v4.channel.k8s.io`; every binary frame starts with its channel
//!   (0 stdin, 1 stdout, 2 stderr, 3 error: a JSON `Status` saying how the command ended);
//! - port-forward: subprotocol `v4.channel.k8s.io` too, ports in the `port` query parameter, two
//!   channels per port (data, error), each opening with the port number (u16, little endian).

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// The channel protocol with a JSON status on channel 3.
pub const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;

/// What a stream carried so far.
#[derive(Debug, Default, Clone)]
pub struct Output {
    /// Per channel, in arrival order.
    pub channels: [Vec<u8>; 4],
    /// Whether the server closed the stream.
    pub closed: bool,
}

impl Output {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.channels[STDOUT as usize]).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.channels[STDERR as usize]).into_owned()
    }

    /// The error channel's text (exec/attach: a JSON `Status`).
    pub fn error(&self) -> String {
        String::from_utf8_lossy(&self.channels[ERROR as usize]).into_owned()
    }

    /// The exit code the error channel's `Status` reports: 0 for `Success`, the `ExitCode`
    /// cause of a `NonZeroExitCode` failure.
    pub fn exit_code(&self) -> Result<i32> {
        let text = self.error();
        let status: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("status {text:?} is not JSON"))?;
        if status["status"] == "Success" {
            return Ok(0);
        }
        let causes = status["details"]["causes"].as_array().cloned().unwrap_or_default();
        let code = causes
            .iter()
            .find(|cause| cause["reason"] == "ExitCode")
            .and_then(|cause| cause["message"].as_str())
            .with_context(|| format!("no exit code in the status {text}"))?;
        code.parse().with_context(|| format!("exit code {code:?} in {text}"))
    }
}

/// One WebSocket stream to the streaming server.
pub struct Stream {
    socket: WebSocket<TcpStream>,
    pub output: Output,
}

impl Stream {
    /// Opens `url` (`http://host:port/<kind>/<token>`, as the CRI call returned it), with
    /// `query` appended (port-forward's ports).
    pub fn open(url: &str, query: &str) -> Result<Stream> {
        let rest =
            url.strip_prefix("http://").with_context(|| format!("not an http URL: {url}"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let tcp = TcpStream::connect(authority)
            .with_context(|| format!("connecting to the streaming server at {authority}"))?;
        tcp.set_read_timeout(Some(Duration::from_millis(200))).context("socket timeout")?;
        let mut request = format!("ws://{rest}{query}")
            .into_client_request()
            .with_context(|| format!("a WebSocket request for {url}"))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(CHANNEL_PROTOCOL));
        let (socket, response) = match tungstenite::client(request, tcp) {
            Ok(done) => done,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let body = response.body().as_deref().unwrap_or_default();
                bail!(
                    "the streaming server refused the WebSocket upgrade for {url}: {} {}",
                    response.status(),
                    String::from_utf8_lossy(body)
                );
            }
            Err(err) => return Err(anyhow!("WebSocket handshake with {url}: {err}")),
        };
        let protocol = response.headers().get("Sec-WebSocket-Protocol");
        anyhow::ensure!(
            protocol.is_some_and(|p| p == CHANNEL_PROTOCOL),
            "the streaming server chose the subprotocol {protocol:?}, not {CHANNEL_PROTOCOL}"
        );
        Ok(Stream { socket, output: Output::default() })
    }

    /// Sends `data` on `channel` (stdin: 0; port-forward data: 0 for the first port).
    pub fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.socket.send(Message::Binary(frame.into())).context("sending on the stream")
    }

    pub fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.send(STDIN, data)
    }

    /// Reads frames until `done(output)` holds or the server closes; fails after `timeout`.
    pub fn read_until(&mut self, timeout: Duration, done: impl Fn(&Output) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(&self.output) {
            if self.output.closed {
                bail!("the stream closed early: {:?}", self.output);
            }
            if Instant::now() > deadline {
                bail!("nothing expected on the stream after {timeout:?}: {:?}", self.output);
            }
            self.read_one()?;
        }
        Ok(())
    }

    /// Reads until the server closes the stream, within `timeout`.
    pub fn read_to_end(&mut self, timeout: Duration) -> Result<Output> {
        self.read_until(timeout, |out| out.closed).or_else(|err| {
            if self.output.closed {
                Ok(())
            } else {
                Err(err)
            }
        })?;
        Ok(self.output.clone())
    }

    fn read_one(&mut self) -> Result<()> {
        match self.socket.read() {
            Ok(Message::Binary(frame)) => {
                // The server opens each channel with an empty frame; the data follows.
                if let Some((&channel, data)) = frame.split_first() {
                    let slot =
                        self.output.channels.get_mut(channel as usize).with_context(|| {
                            format!("a frame on unknown channel {channel}: {data:?}")
                        })?;
                    slot.extend_from_slice(data);
                }
                Ok(())
            }
            Ok(Message::Close(_)) => {
                self.output.closed = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(tungstenite::Error::Io(err))
                if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                Ok(())
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                self.output.closed = true;
                Ok(())
            }
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => {
                self.output.closed = true;
                Ok(())
            }
            Err(err) => Err(anyhow!("reading the stream: {err}")),
        }
    }

    /// Closes our side (a detach, for attach) and waits briefly for the server's close.
    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.output.closed && Instant::now() < deadline {
            if self.read_one().is_err() {
                break;
            }
        }
    }
}
