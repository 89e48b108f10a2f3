//! The host end of a guest vsock port through a hybrid-vsock Unix socket (the Firecracker /
//! vhost-device-vsock convention): connect, write `CONNECT <port>\n`, read `OK <host port>\n`;
//! from then on the stream is the guest connection.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::{sleep, timeout_at, Instant};

/// Pause between attempts when the guest refused one. Callers connect once the guest said it
/// listens ([`ReadyListener`]), so a retry is the exception.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// The longest reply line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection within the time allowed; `last` is the failure of the last attempt.
    #[error("hybrid vsock {socket}: no connection to guest port {port} within {timeout:?} (last failure: {last})")]
    TimedOut { socket: String, port: u32, timeout: Duration, last: String },
    /// A failure that retrying cannot fix.
    #[error("hybrid vsock {socket}: connecting to guest port {port} failed: {reason}")]
    Failed { socket: String, port: u32, reason: String },
    /// The guest did not make its ready connection ([`ReadyListener`]).
    #[error("hybrid vsock {socket}: the guest did not report ready: {reason}")]
    NotReady { socket: String, reason: String },
}

/// Why one attempt failed, and whether another attempt may succeed.
struct AttemptError {
    retry: bool,
    reason: String,
}

impl AttemptError {
    fn io(what: &str, err: io::Error) -> AttemptError {
        let retry = matches!(
            err.kind(),
            io::ErrorKind::NotFound
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        );
        AttemptError { retry, reason: format!("{what}: {err}") }
    }
}

/// Connects to guest vsock `port` through the hybrid-vsock socket `socket`, retrying while the
/// socket is missing, refuses connections or the guest resets them (nobody listens yet), until
/// `timeout` has passed.
pub async fn connect(
    socket: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ConnectError> {
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        // A pending attempt is never abandoned: vhost-device-vsock 0.3 panics when it answers
        // a CONNECT whose host end has gone.
        match timeout_at(deadline, attempt(socket, port)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) if !err.retry => {
                return Err(ConnectError::Failed {
                    socket: socket.display().to_string(),
                    port,
                    reason: err.reason,
                })
            }
            Ok(Err(err)) => last = err.reason,
            Err(_) => {
                last = "no answer to the CONNECT request (is the vsock backend alive?)".into()
            }
        }
        if Instant::now() + RETRY_INTERVAL >= deadline {
            return Err(ConnectError::TimedOut {
                socket: socket.display().to_string(),
                port,
                timeout,
                last,
            });
        }
        sleep(RETRY_INTERVAL).await;
    }
}

/// The host end of a guest-initiated connection to host `port`: vhost-device-vsock (and
/// Firecracker) forward it to the Unix socket `<hybrid socket>_<port>`. Used as a readiness
/// signal: the guest connects once it listens, which also proves that its vsock driver and the
/// backend are up. The socket file is removed on drop.
pub struct ReadyListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadyListener {
    /// Listens for guest connections to host `port` of the VM whose hybrid socket is `socket`.
    /// Must be bound before the guest can connect, i.e. before the VM starts.
    pub fn bind(socket: &Path, port: u32) -> io::Result<ReadyListener> {
        let mut name = socket.as_os_str().to_owned();
        name.push(format!("_{port}"));
        let path = PathBuf::from(name);
        // A file left by a crashed earlier sandbox of the same id would make bind fail.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        Ok(ReadyListener { listener, path })
    }

    /// Waits (at most `limit`) for the guest to connect; the connection itself is dropped.
    pub async fn wait(&self, limit: Duration) -> Result<(), ConnectError> {
        let reason = match tokio::time::timeout(limit, self.listener.accept()).await {
            Ok(Ok(_connection)) => return Ok(()),
            Ok(Err(err)) => format!("accepting its connection failed: {err}"),
            Err(_) => format!("no connection within {limit:?} (did the agent start?)"),
        };
        Err(ConnectError::NotReady { socket: self.path.display().to_string(), reason })
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn attempt(socket: &Path, port: u32) -> Result<UnixStream, AttemptError> {
    let mut stream =
        UnixStream::connect(socket).await.map_err(|err| AttemptError::io("connect", err))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|err| AttemptError::io("sending CONNECT", err))?;
    let reply = read_line(&mut stream).await?;
    if reply.starts_with("OK ") || reply == "OK" {
        Ok(stream)
    } else {
        Err(AttemptError {
            retry: false,
            reason: format!("unexpected reply {reply:?} to CONNECT {port}"),
        })
    }
}

/// Reads one reply line a byte at a time, so nothing after the newline (guest data) is
/// consumed from the stream.
async fn read_line(stream: &mut UnixStream) -> Result<String, AttemptError> {
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|err| AttemptError::io("reading the reply", err))?;
        if n == 0 {
            return Err(AttemptError {
                retry: true,
                reason:
                    "connection closed before the reply (nobody listens on that guest port yet?)"
                        .into(),
            });
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() >= MAX_REPLY {
            return Err(AttemptError {
                retry: false,
                reason: format!("reply longer than {MAX_REPLY} bytes without a newline"),
            });
        }
        line.push(byte[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake hybrid-vsock backend: refuses (closes) the first `refusals` connections, then
    /// answers OK and sends `payload` right behind the reply line.
    fn fake_backend(
        listener: UnixListener,
        refusals: usize,
        payload: &'static [u8],
    ) -> tokio::task::JoinHandle<String> {
        tokio::spawn(async move {
            for _ in 0..refusals {
                let (stream, _) = listener.accept().await.unwrap();
                drop(stream);
            }
            let (stream, _) = listener.accept().await.unwrap();
            let mut reader = tokio::io::BufReader::new(stream);
            let mut request = String::new();
            reader.read_line(&mut request).await.unwrap();
            let mut stream = reader.into_inner();
            let mut reply = b"OK 1073741824\n".to_vec();
            reply.extend_from_slice(payload);
            stream.write_all(&reply).await.unwrap();
            // Keep the connection open until the client is done.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            request
        })
    }

    #[tokio::test]
    async fn handshake_does_not_consume_guest_data_and_retries_resets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let backend = fake_backend(listener, 2, b"hello");

        let mut stream = connect(&path, 1024, Duration::from_secs(5)).await.unwrap();
        let mut data = [0u8; 5];
        stream.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"hello");
        drop(stream);
        assert_eq!(backend.await.unwrap(), "CONNECT 1024\n");
    }

    #[tokio::test]
    async fn waits_for_the_socket_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let later = path.clone();
        let backend = tokio::spawn(async move {
            sleep(Duration::from_millis(200)).await;
            fake_backend(UnixListener::bind(&later).unwrap(), 0, b"").await.unwrap()
        });
        let stream = connect(&path, 7, Duration::from_secs(5)).await.unwrap();
        drop(stream);
        assert_eq!(backend.await.unwrap(), "CONNECT 7\n");
    }

    #[tokio::test]
    async fn missing_socket_times_out_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let started = std::time::Instant::now();
        let err = connect(&path, 1024, Duration::from_millis(300)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        let message = err.to_string();
        assert!(message.contains("absent.sock") && message.contains("1024"), "{message}");
        assert!(matches!(err, ConnectError::TimedOut { .. }));
    }

    #[tokio::test]
    async fn garbage_reply_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"NOPE\n").await.unwrap();
            sleep(Duration::from_secs(5)).await;
        });
        let err = connect(&path, 1024, Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("NOPE"));
    }

    #[tokio::test]
    async fn ready_listener_takes_the_guests_connection_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("bazaar-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hybrid = dir.join("vsock.sock");
        let ready = ReadyListener::bind(&hybrid, 1025).unwrap();
        let expected = dir.join("vsock.sock_1025");
        assert!(expected.exists(), "the backend connects to <uds>_<port>");
        // The backend's side of a guest connection to host port 1025.
        let _guest = UnixStream::connect(&expected).await.unwrap();
        ready.wait(Duration::from_secs(5)).await.unwrap();
        drop(ready);
        assert!(!expected.exists(), "the socket file is removed on drop");

        // Nobody connects: a clear error, in time.
        let ready = ReadyListener::bind(&hybrid, 1025).unwrap();
        let err = ready.wait(Duration::from_millis(100)).await.unwrap_err();
        assert!(err.to_string().contains("did not report ready"), "{err}");
        drop(ready);
        std::fs::remove_dir(&dir).unwrap();
    }
}
