//! CRI's PortForward, guest side: the host connects to vsock port [`AGENT_FORWARD_PORT`] and
//! names a TCP port; the agent connects to it on the VM's loopback, in the network namespace
//! every container of the pod shares (where containerd's own port forward would have dialled
//! `localhost` under runc), and copies both ways until either side closes.

use std::os::fd::OwnedFd;

use anyhow::{bail, Context, Result};
use bazaar_protocols::AGENT_FORWARD_PORT;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use slog::{debug, warn, Logger};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Any CID: the VM's own.
const VMADDR_CID_ANY: u32 = u32::MAX;
/// Longest request line accepted (`PORT 65535\n` is 11 bytes).
const MAX_REQUEST: usize = 32;

/// Listens on the forward port and serves each connection in its own task.
pub fn start(log: Logger) -> Result<()> {
    let listener = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .context("vsock socket for port forwarding")?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        &VsockAddr::new(VMADDR_CID_ANY, AGENT_FORWARD_PORT),
    )
    .with_context(|| format!("binding vsock port {AGENT_FORWARD_PORT}"))?;
    listen(&listener, Backlog::new(16).context("backlog")?).context("listening for forwards")?;
    let listener =
        crate::sys::register_async(listener).context("registering the forward listener")?;
    tokio::spawn(async move {
        loop {
            match accept(&listener).await {
                Ok(connection) => {
                    let log = log.clone();
                    tokio::spawn(async move {
                        if let Err(err) = serve(connection).await {
                            debug!(log, "port forward ended"; "error" => format!("{err:#}"));
                        }
                    });
                }
                Err(err) => {
                    warn!(log, "port forward listener failed"; "error" => %err);
                    return;
                }
            }
        }
    });
    Ok(())
}

async fn accept(listener: &AsyncFd<OwnedFd>) -> std::io::Result<UnixStream> {
    loop {
        let mut guard = listener.readable().await?;
        let accepted = guard.try_io(|fd| {
            let raw = std::os::fd::AsRawFd::as_raw_fd(fd.get_ref());
            accept4(raw, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
                .map_err(std::io::Error::from)
        });
        if let Ok(result) = accepted {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(result?) };
            // A connected vsock stream reads and writes like any stream socket; tokio's Unix
            // stream type only needs that (no address calls are made on it).
            return UnixStream::from_std(std::os::unix::net::UnixStream::from(fd));
        }
    }
}

async fn serve(mut host: UnixStream) -> Result<()> {
    let port = read_request(&mut host).await?;
    let mut target = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(stream) => {
            host.write_all(b"OK\n").await.context("answering the host")?;
            stream
        }
        Err(err) => {
            let reply = format!("ERR connecting to 127.0.0.1:{port} in the pod: {err}\n");
            host.write_all(reply.as_bytes()).await.context("answering the host")?;
            return Ok(());
        }
    };
    tokio::io::copy_bidirectional(&mut host, &mut target).await.context("copying")?;
    Ok(())
}

/// Reads `PORT <n>\n`, byte by byte so that nothing after the line is consumed.
async fn read_request(host: &mut UnixStream) -> Result<u16> {
    let mut line = Vec::new();
    loop {
        let byte = host.read_u8().await.context("reading the forward request")?;
        if byte == b'\n' {
            break;
        }
        if line.len() == MAX_REQUEST {
            bail!("forward request longer than {MAX_REQUEST} bytes");
        }
        line.push(byte);
    }
    parse_request(&String::from_utf8_lossy(&line))
}

fn parse_request(line: &str) -> Result<u16> {
    let port = line.strip_prefix("PORT ").with_context(|| format!("bad request {line:?}"))?;
    port.parse().with_context(|| format!("bad port in {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_one_tcp_port() {
        assert_eq!(parse_request("PORT 8080").unwrap(), 8080);
        for bad in ["PORT", "PORT 65536", "PORT -1", "port 80", "CONNECT 80", ""] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }
}
