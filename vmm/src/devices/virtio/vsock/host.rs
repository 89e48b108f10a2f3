//! The host side of the device: Unix sockets speaking the "hybrid vsock" convention of
//! Firecracker and vhost-device-vsock (and `hypervisor/src/hybrid_vsock.rs`, our client).
//! - A host process connects to the device's socket, writes `CONNECT <port>\n` and, once the
//!   guest accepted, reads `OK <host port>\n`; the stream is then the guest connection.
//! - A guest connection to host port P is forwarded to the Unix socket `<socket>_<P>`.

use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The longest `CONNECT` line accepted, newline included (`CONNECT 4294967295\n` is 19 bytes).
const MAX_CONNECT_LINE: usize = 32;

/// Binds the device's listening socket, non-blocking (the worker polls it).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Where a guest connection to host `port` is forwarded: `<socket>_<port>`.
pub fn port_path(socket: &Path, port: u32) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// The reply telling a host client its connection is up, `local_port` being the host-side
/// vsock port the device allocated for it.
pub fn ok_reply(local_port: u32) -> Vec<u8> {
    format!("OK {local_port}\n").into_bytes()
}

/// Parses `CONNECT <port>` (newline already removed; a trailing `\r` is tolerated).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let port = line.strip_prefix(b"CONNECT ")?;
    if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(port).ok()?.parse().ok()
}

/// Connects to the Unix socket at `path` without ever blocking: a listener whose backlog is
/// full fails the attempt (EAGAIN) instead of stalling the device's worker, and the stream is
/// non-blocking from the start.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: `sockaddr_un` is a plain C struct for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let addr_len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;

    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just created and owned by nobody else; the stream takes
    // ownership so that it is closed on every path below.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is an initialized sockaddr_un that outlives the call, and `addr_len`
    // (family + path + NUL) is within its size because the path length was checked above.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            addr_len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// A host client that has connected but not yet sent its whole `CONNECT` line.
pub struct PendingConnect {
    pub stream: UnixStream,
    line: Vec<u8>,
    /// When the client is given up on.
    pub deadline: Instant,
    /// Whether the stream is in the worker's epoll set.
    pub registered: bool,
}

/// Where reading a `CONNECT` line stands.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectLine {
    /// More bytes are needed.
    Incomplete,
    /// The client asked for this guest port.
    Port(u32),
    /// Malformed, too long, or the client went away: close it.
    Invalid,
}

impl PendingConnect {
    /// Tracks a freshly accepted client, which has until `deadline` to send its line.
    pub fn new(stream: UnixStream, deadline: Instant) -> io::Result<PendingConnect> {
        stream.set_nonblocking(true)?;
        Ok(PendingConnect { stream, line: Vec::new(), deadline, registered: false })
    }

    /// Reads what the client sent so far. A byte at a time, so that nothing past the newline
    /// (data for the guest) is taken out of the stream.
    pub fn read_line(&mut self) -> ConnectLine {
        loop {
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => return ConnectLine::Invalid,
                Ok(_) if byte[0] == b'\n' => {
                    return parse_connect_line(&self.line)
                        .map_or(ConnectLine::Invalid, ConnectLine::Port);
                }
                Ok(_) if self.line.len() + 1 >= MAX_CONNECT_LINE => return ConnectLine::Invalid,
                Ok(_) => self.line.push(byte[0]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return ConnectLine::Incomplete
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ConnectLine::Invalid,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295\r"), Some(u32::MAX));
        for bad in
            [&b"CONNECT"[..], b"CONNECT ", b"CONNECT +5", b"CONNECT 4294967296", b"connect 1"]
        {
            assert_eq!(parse_connect_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn port_path_appends_the_port() {
        assert_eq!(port_path(Path::new("/run/v.sock"), 1025), PathBuf::from("/run/v.sock_1025"));
        assert_eq!(ok_reply(1 << 30), b"OK 1073741824\n");
    }

    #[test]
    fn line_is_read_without_consuming_what_follows() {
        let (mut client, server) = UnixStream::pair().expect("pair");
        let mut pending = PendingConnect::new(server, Instant::now()).expect("pending");
        client.write_all(b"CONN").expect("write");
        assert_eq!(pending.read_line(), ConnectLine::Incomplete);
        client.write_all(b"ECT 7\nrest").expect("write");
        assert_eq!(pending.read_line(), ConnectLine::Port(7));
        let mut rest = [0u8; 4];
        pending.stream.read_exact(&mut rest).expect("rest");
        assert_eq!(&rest, b"rest");
    }

    #[test]
    fn overlong_line_and_eof_are_invalid() {
        let (mut client, server) = UnixStream::pair().expect("pair");
        let mut pending = PendingConnect::new(server, Instant::now()).expect("pending");
        client.write_all(&[b'9'; 40]).expect("write");
        assert_eq!(pending.read_line(), ConnectLine::Invalid);

        let (client, server) = UnixStream::pair().expect("pair");
        let mut pending = PendingConnect::new(server, Instant::now()).expect("pending");
        drop(client);
        assert_eq!(pending.read_line(), ConnectLine::Invalid);
    }

    #[test]
    fn nonblocking_connect_reaches_a_listener_and_fails_fast_without_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).expect("bind");
        let stream = connect(&path).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        drop((stream, accepted));
        let err = connect(&dir.path().join("absent")).expect_err("no listener");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let long = dir.path().join("x".repeat(200));
        assert_eq!(connect(&long).expect_err("too long").kind(), io::ErrorKind::InvalidInput);
    }
}
