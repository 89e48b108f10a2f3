//! The launcher: a small process forked from the agent at start-up, before any thread exists,
//! that forks the container helper on request.
//!
//! Why: re-executing the agent binary for every container process (`/proc/self/exe
//! __init-container`) costs a whole exec of a static binary, its start-up and its page faults —
//! about 60 ms under TCG, for each create and each exec. A fork of the single-threaded launcher
//! costs a fraction of that, and `fork` stays out of the multi-threaded tokio process all the
//! same. The helper code that runs in the forked child is the same as after the re-exec
//! ([`helper::run_with`]); the re-exec remains the fallback when the launcher is gone.
//!
//! Protocol: one `SOCK_SEQPACKET` message per helper, a one-byte payload with five fds attached
//! (`SCM_RIGHTS`): the process's stdin, stdout, stderr, the config pipe's reading end and the
//! helper's end of the sync socket. Nothing comes back on this socket: the helper reports over
//! its sync socket exactly as a re-executed helper does.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::Context;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::ForkResult;

use super::helper;
use super::sync::SyncSocket;
use crate::stdio::ChildStdio;

/// Fds passed per request.
const FDS_PER_REQUEST: usize = 5;

/// The agent's end of the launcher socket.
pub struct Launcher {
    socket: OwnedFd,
}

impl Launcher {
    /// Forks the launcher. Must be called while the agent is still single-threaded.
    pub fn start() -> anyhow::Result<Launcher> {
        let (agent_end, launcher_end) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                .context("create the launcher socket")?;
        // SAFETY: the caller guarantees that no other thread exists, so the child may run any
        // code after fork.
        match unsafe { nix::unistd::fork() }.context("fork the launcher")? {
            ForkResult::Parent { .. } => Ok(Launcher { socket: agent_end }),
            ForkResult::Child => {
                drop(agent_end);
                serve(launcher_end)
            }
        }
    }

    /// Asks the launcher for a helper with these fds. Fails when the launcher is gone.
    pub fn launch(&self, stdio: &ChildStdio, config: &OwnedFd, sync: &OwnedFd) -> io::Result<()> {
        let fds: [RawFd; FDS_PER_REQUEST] = [
            stdio.stdin.as_raw_fd(),
            stdio.stdout.as_raw_fd(),
            stdio.stderr.as_raw_fd(),
            config.as_raw_fd(),
            sync.as_raw_fd(),
        ];
        let control = [ControlMessage::ScmRights(&fds)];
        let payload = [IoSlice::new(b"L")];
        loop {
            match sendmsg::<()>(
                self.socket.as_raw_fd(),
                &payload,
                &control,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Makes this launcher the one [`get`] returns.
    pub fn install(self) {
        let _ = LAUNCHER.set(self);
    }
}

static LAUNCHER: std::sync::OnceLock<Launcher> = std::sync::OnceLock::new();

/// The agent's launcher, if it started one.
pub fn get() -> Option<&'static Launcher> {
    LAUNCHER.get()
}

/// The launcher's loop: one forked helper per request, until the agent closes the socket.
fn serve(socket: OwnedFd) -> ! {
    // The launcher never outlives the agent (host mode; in the guest the agent is PID 1).
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    // Helpers are reaped by the kernel: the agent's reaper never sees them, and the container
    // process a helper forks is reparented to the agent when the helper exits.
    // SAFETY: installing a disposition, no handler code.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    loop {
        let fds = match receive(&socket) {
            Ok(Some(fds)) => fds,
            // The agent is gone (or closed its end): nothing more to launch.
            Ok(None) => std::process::exit(0),
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => std::process::exit(1),
        };
        let Ok([stdin, stdout, stderr, config, sync]) = <[OwnedFd; FDS_PER_REQUEST]>::try_from(fds)
        else {
            // A malformed request: its fds are closed by the drop, so the agent sees its sync
            // socket reach end of file.
            continue;
        };
        // SAFETY: the launcher is single-threaded (forked before the agent started threads).
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => {
                drop(socket);
                // The helper's children must see SIGCHLD as usual (the helper resets every
                // signal for the container process too).
                // SAFETY: installing the default disposition.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                if become_stdio(&stdin, &stdout, &stderr).is_err() {
                    // Without its stdio the helper cannot run; the agent sees end of file.
                    std::process::exit(1);
                }
                drop((stdin, stdout, stderr));
                helper::run_with(File::from(config), SyncSocket::new(sync));
            }
            // The parent's copies close as the request goes out of scope; on a failed fork the
            // agent sees the sync socket reach end of file and reports the helper gone.
            Ok(ForkResult::Parent { .. }) | Err(_) => {}
        }
    }
}

/// Receives one request: its fds, or `None` at end of file.
fn receive(socket: &OwnedFd) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut payload = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut payload)];
    let mut control = nix::cmsg_space!([RawFd; FDS_PER_REQUEST]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::with_capacity(FDS_PER_REQUEST);
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS installed these fds in this process; nothing else owns them.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some(fds))
}

/// Makes the three fds this process's stdin, stdout and stderr (without close-on-exec).
fn become_stdio(stdin: &OwnedFd, stdout: &OwnedFd, stderr: &OwnedFd) -> nix::Result<()> {
    nix::unistd::dup2_stdin(stdin)?;
    nix::unistd::dup2_stdout(stdout)?;
    nix::unistd::dup2_stderr(stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_five_fds() {
        let (a, b) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                .unwrap();
        let launcher = Launcher { socket: a };
        let null = || OwnedFd::from(File::open("/dev/null").unwrap());
        let stdio = ChildStdio { stdin: null(), stdout: null(), stderr: null() };
        let (config, sync) = (null(), null());
        launcher.launch(&stdio, &config, &sync).unwrap();
        drop(launcher);
        let fds = receive(&b).unwrap().unwrap();
        assert_eq!(fds.len(), FDS_PER_REQUEST);
        assert!(receive(&b).unwrap().is_none());
    }
}
