//! CRI's PortForward, host side. containerd 1.6 forwards a port by entering the pod's network
//! namespace on the host and dialling `localhost:<port>` there; under Bazaar the pod listens in
//! its VM. So the runtime puts a listener on the namespace's loopback and an iptables NAT rule
//! that redirects every TCP connection to 127.0.0.1 there to it; each accepted connection names
//! its original port (`SO_ORIGINAL_DST`), and goes over hybrid vsock to the agent, which
//! connects to that port on the guest's loopback (`agent/src/forward.rs`).

use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bazaar_hypervisor::hybrid_vsock;
use bazaar_protocols::AGENT_FORWARD_PORT;
use slog::{debug, warn, Logger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The nat chain holding the redirect, jumped to from OUTPUT: flushing it undoes the rule
/// whatever port an earlier sandbox used.
const CHAIN: &str = "BAZAAR-PORT-FORWARD";
/// How long a forward waits for the guest's vsock.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest reply line accepted from the agent.
const MAX_REPLY: usize = 512;

/// In the pod's namespace (the calling thread's): binds the loopback listener and redirects
/// loopback TCP to it.
pub fn prepare() -> Result<StdTcpListener> {
    let listener = StdTcpListener::bind("127.0.0.1:0").context("binding the forward listener")?;
    let port = listener.local_addr().context("the forward listener's address")?.port();
    // The chain may exist already (a sandbox restarted in the same namespace).
    let _ = iptables(&["-N", CHAIN]);
    iptables(&["-F", CHAIN])?;
    iptables(&[
        "-A",
        CHAIN,
        "-p",
        "tcp",
        "-d",
        "127.0.0.1/32",
        "-j",
        "REDIRECT",
        "--to-ports",
        &port.to_string(),
    ])?;
    if iptables(&["-C", "OUTPUT", "-j", CHAIN]).is_err() {
        iptables(&["-A", "OUTPUT", "-j", CHAIN])?;
    }
    Ok(listener)
}

/// In the pod's namespace: removes the redirect.
pub fn undo() -> Result<()> {
    iptables(&["-F", CHAIN])
}

fn iptables(args: &[&str]) -> Result<()> {
    let output = Command::new("iptables")
        .args(["-w", "5", "-t", "nat"])
        .args(args)
        .output()
        .context("running iptables (install the iptables package)")?;
    if !output.status.success() {
        bail!(
            "iptables -t nat {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Serves the listener: each connection is forwarded to the guest through `vsock_socket`.
pub fn spawn(
    listener: StdTcpListener,
    vsock_socket: PathBuf,
    logger: Logger,
) -> Result<JoinHandle<()>> {
    listener.set_nonblocking(true).context("making the forward listener non-blocking")?;
    let listener =
        tokio::net::TcpListener::from_std(listener).context("registering the forward listener")?;
    Ok(tokio::spawn(async move {
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(err) => {
                    warn!(logger, "port forward listener failed"; "error" => %err);
                    return;
                }
            };
            let (vsock_socket, logger) = (vsock_socket.clone(), logger.clone());
            tokio::spawn(async move {
                if let Err(err) = forward(client, &vsock_socket, &logger).await {
                    warn!(logger, "port forward failed"; "error" => format!("{err:#}"));
                }
            });
        }
    }))
}

async fn forward(
    mut client: TcpStream,
    vsock_socket: &std::path::Path,
    logger: &Logger,
) -> Result<()> {
    let port = original_port(&client)?;
    let mut guest = hybrid_vsock::connect(vsock_socket, AGENT_FORWARD_PORT, CONNECT_TIMEOUT)
        .await
        .context("connecting to the agent's forward port")?;
    guest.write_all(format!("PORT {port}\n").as_bytes()).await.context("asking for the port")?;
    let reply = read_line(&mut guest).await?;
    if reply != "OK" {
        bail!("forwarding port {port}: the agent answered {reply:?}");
    }
    let (to_guest, to_client) = tokio::io::copy_bidirectional(&mut client, &mut guest)
        .await
        .with_context(|| format!("forwarding port {port}"))?;
    debug!(logger, "port forward done"; "port" => port, "to_guest" => to_guest, "to_client" => to_client);
    Ok(())
}

/// The port the client dialled before the NAT redirect.
fn original_port(client: &TcpStream) -> Result<u16> {
    let original = nix::sys::socket::getsockopt(client, nix::sys::socket::sockopt::OriginalDst)
        .context("reading the connection's original destination")?;
    Ok(u16::from_be(original.sin_port))
}

async fn read_line(stream: &mut tokio::net::UnixStream) -> Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await.context("reading the agent's answer")?;
        if byte == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() == MAX_REPLY {
            bail!("the agent's answer is longer than {MAX_REPLY} bytes");
        }
        line.push(byte);
    }
}
