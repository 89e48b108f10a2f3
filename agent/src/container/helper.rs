//! The short-lived, single-threaded helper that creates a container process: forked by the
//! [launcher](super::launcher), or as a fallback re-executed as `bazaar-agent __init-container
//! CONFIG_FD SYNC_FD`.
//!
//! It reads its [`HelperConfig`] from the config pipe, joins the container's cgroup, unshares
//! (init) or joins (exec) the namespaces, and forks once: the child is the container process
//! (PID 1 of a new PID namespace for an init). The helper reports the child's pid and exits, so
//! the child is reparented to the agent, whose reaper collects its exit status. Forking here and
//! not in the agent keeps `fork` out of the multi-threaded tokio process.
//!
//! Fds 0-2 are the container process's stdio, so the helper never prints: errors travel over the
//! sync socket.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::Context;
use nix::unistd::ForkResult;

use super::config::{HelperInput, Mode};
use super::sync::{ErrorCode, Message, SetupError, SyncSocket};
use super::{namespaces, setup};
use crate::sys;

/// Entry point of the helper subcommand; never returns.
pub fn main(args: &[String]) -> ! {
    let parse =
        |arg: Option<&String>| arg.and_then(|arg| arg.parse::<RawFd>().ok()).filter(|fd| *fd > 2);
    let (Some(config_fd), Some(sync_fd)) = (parse(args.first()), parse(args.get(1))) else {
        eprintln!("bazaar-agent: {} is internal to the agent", super::HELPER_SUBCOMMAND);
        std::process::exit(2);
    };
    // Not for the container process: the socket is re-opened close-on-exec.
    let _ = sys::set_cloexec(config_fd, true);
    let _ = sys::set_cloexec(sync_fd, true);
    // SAFETY: the agent passed these two fds open for us alone (argv names them).
    let (config_file, sync) =
        unsafe { (File::from_raw_fd(config_fd), SyncSocket::new(OwnedFd::from_raw_fd(sync_fd))) };
    run_with(config_file, sync)
}

/// The helper proper, after a re-exec ([`main`]) or a fork of the launcher
/// ([`super::launcher`]); fds 0-2 are the container process's stdio. Never returns.
pub fn run_with(config_file: File, sync: SyncSocket) -> ! {
    let err = match run(config_file, &sync) {
        Ok(never) => match never {},
        Err(err) => err,
    };
    let _ = sync.send(&Message::Error(SetupError::from_anyhow(&err)));
    std::process::exit(1);
}

fn run(config_file: File, sync: &SyncSocket) -> anyhow::Result<std::convert::Infallible> {
    let HelperInput { config, seccomp } = serde_json::from_reader(config_file).map_err(|err| {
        SetupError::new(ErrorCode::Internal, format!("the helper could not read its config: {err}"))
    })?;
    if let Some(procs) = &config.cgroup_procs {
        // "0" moves the writer; the child forked below inherits the cgroup.
        std::fs::write(procs, "0")
            .with_context(|| format!("join the cgroup ({})", procs.display()))?;
    }
    match &config.mode {
        Mode::Init { spec, .. } => namespaces::enter_new(spec)?,
        Mode::Exec { init_pid } => namespaces::join(*init_pid)?,
    }
    // SAFETY: the helper is single-threaded (a fresh exec that started no threads), so the
    // child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.context("fork the container process")? {
        ForkResult::Parent { child } => {
            sync.send(&Message::Pid(child.as_raw())).context("report the pid")?;
            std::process::exit(0);
        }
        ForkResult::Child => {
            let err = match config.mode {
                Mode::Init { .. } => setup::run_init(&config, seccomp.as_ref(), sync),
                Mode::Exec { .. } => setup::run_exec(&config, seccomp.as_ref(), sync),
            };
            let _ = sync.send(&Message::Error(SetupError::from_anyhow(&err)));
            // SAFETY: _exit ends the process without running the parent's atexit handlers.
            unsafe { libc::_exit(127) }
        }
    }
}
