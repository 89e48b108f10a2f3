//! Telling the host that the agent serves: one connection to the host's vsock port
//! [`AGENT_READY_PORT`], closed at once. The host connects to the agent API only after it (see
//! `bazaar_protocols::AGENT_READY_PORT` for why).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use bazaar_protocols::AGENT_READY_PORT;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
use slog::{debug, warn, Logger};

/// The host's CID.
const HOST_CID: u32 = 2;
/// Pause between attempts while nobody listens on the host (a host runtime without the ready
/// listener, or one that is slow to bind).
const RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// How long the agent keeps trying; the host gives up on the agent by then anyway.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// Announces readiness in the background; failures are logged, the agent serves regardless.
pub fn announce(log: Logger) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            match connect_once() {
                Ok(_connection) => {
                    debug!(log, "told the host the agent serves";
                        "elapsed_ms" => started.elapsed().as_millis() as u64);
                    return;
                }
                Err(err) if started.elapsed() < GIVE_UP_AFTER => {
                    debug!(log, "ready announcement refused, retrying"; "error" => %err);
                    std::thread::sleep(RETRY_INTERVAL);
                }
                Err(err) => {
                    warn!(log, "could not tell the host the agent serves"; "error" => %err);
                    return;
                }
            }
        }
    });
}

fn connect_once() -> nix::Result<OwnedFd> {
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &VsockAddr::new(HOST_CID, AGENT_READY_PORT))?;
    Ok(fd)
}
