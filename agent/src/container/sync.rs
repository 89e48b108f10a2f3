//! The channel between the agent, its helper and the container process: a `SOCK_SEQPACKET`
//! socket pair, so every message arrives whole and in one piece, carrying one JSON message.
//!
//! Sequence for a container's init:
//! helper → agent `Pid`; child → agent `Ready` (or `Error`); on StartContainer agent → child
//! `Start`; then the socket reaches end of file when the child's `execve` closes it
//! (close-on-exec), or the child sends `Error` if the exec failed. For an exec'd process there is
//! no `Ready`/`Start`: end of file after `Pid` means the exec happened.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Context;
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

/// Largest message; error messages are cut to fit.
const MAX_MESSAGE: usize = 64 << 10;

/// A message on the sync socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Message {
    /// From the helper: the pid of the container process in the agent's PID namespace.
    Pid(i32),
    /// From the container's init: set up, waiting for `Start`.
    Ready,
    /// From the agent: exec the user's program.
    Start,
    /// From the helper or the container process: setup failed.
    Error(SetupError),
}

/// Why the setup of a container process failed, with the status code the RPC should carry.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct SetupError {
    pub code: ErrorCode,
    pub message: String,
}

/// The class of a setup error; it becomes the ttrpc status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    NotFound,
    InvalidArgument,
    FailedPrecondition,
    PermissionDenied,
    Internal,
}

impl SetupError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SetupError { code, message: message.into() }
    }

    /// Converts an error chain: the code of the first `SetupError` in it (internal if none), the
    /// message of the whole chain.
    pub fn from_anyhow(err: &anyhow::Error) -> Self {
        let code = err
            .chain()
            .find_map(|cause| cause.downcast_ref::<SetupError>())
            .map_or(ErrorCode::Internal, |setup| setup.code);
        SetupError { code, message: format!("{err:#}") }
    }
}

/// Creates the socket pair: (agent's end, helper's end). Both are close-on-exec.
pub fn pair() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .context("failed to create the sync socket pair")
}

fn encode(message: &Message) -> Vec<u8> {
    let mut message = message.clone();
    if let Message::Error(err) = &mut message {
        if err.message.len() > MAX_MESSAGE / 2 {
            let mut end = MAX_MESSAGE / 2;
            while !err.message.is_char_boundary(end) {
                end -= 1;
            }
            err.message.truncate(end);
        }
    }
    // Serialising these plain enums cannot fail.
    serde_json::to_vec(&message).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> io::Result<Message> {
    serde_json::from_slice(bytes).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// The blocking end used by the helper and the container process.
pub struct SyncSocket(OwnedFd);

impl SyncSocket {
    pub fn new(fd: OwnedFd) -> Self {
        SyncSocket(fd)
    }

    pub fn raw_fd(&self) -> i32 {
        self.0.as_raw_fd()
    }

    pub fn send(&self, message: &Message) -> io::Result<()> {
        let bytes = encode(message);
        loop {
            match nix::sys::socket::send(self.0.as_raw_fd(), &bytes, MsgFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// The next message, or `None` at end of file.
    pub fn recv(&self) -> io::Result<Option<Message>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            match nix::sys::socket::recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) => return Ok(None),
                Ok(n) => return decode(&buf[..n]).map(Some),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }
}

/// The agent's end, driven by tokio.
pub struct AsyncSyncSocket(AsyncFd<OwnedFd>);

impl AsyncSyncSocket {
    pub fn new(fd: OwnedFd) -> anyhow::Result<Self> {
        let fd = crate::sys::register_async(fd).context("failed to register the sync socket")?;
        Ok(AsyncSyncSocket(fd))
    }

    pub async fn send(&self, message: &Message) -> io::Result<()> {
        let bytes = encode(message);
        loop {
            let mut guard = self.0.writable().await?;
            let result = guard.try_io(|fd| {
                nix::sys::socket::send(fd.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL)
                    .map_err(io::Error::from)
            });
            match result {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next message, or `None` at end of file.
    pub async fn recv(&self) -> io::Result<Option<Message>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut guard = self.0.readable().await?;
            let result = guard.try_io(|fd| {
                nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                    .map_err(io::Error::from)
            });
            match result {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => return decode(&buf[..n]).map(Some),
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn messages_cross_the_socket_whole() {
        let (a, b) = pair().unwrap();
        let (a, b) = (SyncSocket::new(a), SyncSocket::new(b));
        a.send(&Message::Pid(42)).unwrap();
        a.send(&Message::Error(SetupError::new(ErrorCode::NotFound, "gone"))).unwrap();
        drop(a);
        assert!(matches!(b.recv().unwrap(), Some(Message::Pid(42))));
        match b.recv().unwrap() {
            Some(Message::Error(err)) => {
                assert_eq!(err.code, ErrorCode::NotFound);
                assert_eq!(err.message, "gone");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(b.recv().unwrap().is_none());
    }

    #[test]
    fn error_code_survives_context() {
        let err: anyhow::Result<()> =
            Err(SetupError::new(ErrorCode::NotFound, "rootfs /x does not exist").into());
        let err = err.context("container setup").unwrap_err();
        let setup = SetupError::from_anyhow(&err);
        assert_eq!(setup.code, ErrorCode::NotFound);
        assert_eq!(setup.message, "container setup: rootfs /x does not exist");
        let plain = SetupError::from_anyhow(&anyhow::anyhow!("boom"));
        assert_eq!(plain.code, ErrorCode::Internal);
    }
}
