//! The channel between the agent, its helper and the container process: a `SOCK_SEQPACKET`
//! socket pair, so every message arrives whole and in one piece, carrying one JSON message.
//!
//! Sequence for a container's init:
//! helper → agent `Pid`; child → agent `Ready` (or `Error`); on StartContainer agent → child
//! `Start`; then the socket reaches end of file when the child's `execve` closes it
//! (close-on-exec), or the child sends `Error` if the exec failed. For an exec'd process there is
//! no `Ready`/`Start`: end of file after `Pid` means the exec happened.
//!
//! A process with a terminal also sends `Console` before `Ready` (or before its exec), carrying
//! the master of the pty it opened in the container's devpts as an `SCM_RIGHTS` fd: the process
//! gets a /dev/pts/N of its own container, as under runc's console socket.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::Context;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
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
    /// From a container process with a terminal: the pty master travels with this message.
    Console,
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

    /// Sends `message` with `fd` attached (`SCM_RIGHTS`); the receiver gets its own copy.
    pub fn send_with_fd(&self, message: &Message, fd: RawFd) -> io::Result<()> {
        let bytes = encode(message);
        let fds = [fd];
        let control = [ControlMessage::ScmRights(&fds)];
        loop {
            let iov = [IoSlice::new(&bytes)];
            match sendmsg::<()>(self.0.as_raw_fd(), &iov, &control, MsgFlags::empty(), None) {
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

    /// The next message, or `None` at end of file. An fd sent along (`Console`) is returned
    /// with it, close-on-exec.
    pub async fn recv(&self) -> io::Result<Option<Received>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| recv_with_fd(fd.as_raw_fd(), &mut buf)) {
                Ok(Ok((0, _))) => return Ok(None),
                Ok(Ok((n, fd))) => {
                    let message = decode(&buf[..n])?;
                    return Ok(Some(Received { message, fd }));
                }
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A message as the agent received it, with the fd that came along, if any.
#[derive(Debug)]
pub struct Received {
    pub message: Message,
    pub fd: Option<OwnedFd>,
}

/// One `recvmsg`: the number of bytes and the first fd passed with them. Extra fds (nobody
/// should send them) are closed rather than leaked.
fn recv_with_fd(socket: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut control = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(socket, &mut iov, Some(&mut control), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: SCM_RIGHTS installed these fds in this process just now; nothing else
            // owns them.
            received.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok((msg.bytes, received.into_iter().next()))
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

    #[tokio::test]
    async fn a_console_fd_crosses_the_socket() {
        let (a, b) = pair().unwrap();
        let (a, b) = (SyncSocket::new(a), AsyncSyncSocket::new(b).unwrap());
        let (read, write) = nix::unistd::pipe().unwrap();
        a.send_with_fd(&Message::Console, write.as_raw_fd()).unwrap();
        drop(write);
        a.send(&Message::Ready).unwrap();
        drop(a);
        let got = b.recv().await.unwrap().unwrap();
        assert!(matches!(got.message, Message::Console));
        // The received fd is the pipe's writing end: what goes in comes out of `read`.
        nix::unistd::write(got.fd.as_ref().unwrap(), b"hi").unwrap();
        drop(got);
        let mut buf = [0u8; 4];
        assert_eq!(nix::unistd::read(&read, &mut buf).unwrap(), 2);
        let ready = b.recv().await.unwrap().unwrap();
        assert!(matches!(ready.message, Message::Ready) && ready.fd.is_none());
        assert!(b.recv().await.unwrap().is_none());
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
