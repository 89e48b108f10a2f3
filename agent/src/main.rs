//! `bazaar-agent`: the guest agent of a Bazaar sandbox.
//!
//! In the guest it is `/init` of the initrd, PID 1 of the VM: it mounts the kernel filesystems,
//! reaps orphans, and serves the ttrpc `AgentService` (`bazaar.agent.v1`) on vsock port 1024. The
//! runtime on the host drives it: create the sandbox (mount the virtio-fs share), create, start,
//! exec into, signal, wait for and remove containers, and move their stdio.
//!
//! On a host (not PID 1) the same binary serves on a Unix socket (`--listen unix:///path`) for
//! component tests; it then skips the init mounts, exits where PID 1 would end the VM, and
//! becomes a child subreaper.
//!
//! # Why the container setup is our own code and not youki's `libcontainer`
//!
//! `libcontainer` (0.7) is a runc replacement and brings runc's shape with it:
//! - it keeps container state in a host-side state directory (`ContainerBuilder::with_root_path`,
//!   `/run/youki` by default) and builds containers from a bundle directory holding
//!   `config.json`; the agent receives the spec over RPC and owns its state in memory;
//! - its cgroup layer (`libcgroups`) brings v1, v2 and systemd managers, and the default features
//!   link `libseccomp` (a C library), netlink, procfs, regex, chrono and CRIU bindings: a large
//!   tree to link statically into a PID 1 that must stay small and libc-free at run time;
//! - its process model forks its own intermediate and main processes and waits for them itself,
//!   while in the guest every process is reparented to the agent, whose reaper must be the only
//!   one calling `waitpid` (two reapers race for the same exit statuses).
//!
//! Our setup is one helper (see [`container::helper`]), forked by a launcher process the agent
//! forks at start-up ([`container::launcher`]) or re-executed (`bazaar-agent __init-container`),
//! that reads its setup from a pipe, enters namespaces, forks once and reports back over a socket.

mod config;
mod container;
mod error;
mod forward;
mod init;
mod logging;
mod network;
mod oom;
mod ready;
mod reaper;
mod service;
mod state;
mod stdio;
mod sys;

use std::sync::Arc;

use anyhow::Context;
use slog::{error, info, o, Logger};

use crate::config::Config;
use crate::reaper::Reaper;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(container::HELPER_SUBCOMMAND) {
        container::helper::main(&args[2..]);
    }

    let pid1 = std::process::id() == 1;
    if pid1 {
        init::install_panic_hook();
    }
    let mut config = match Config::from_args(&args[1..], pid1) {
        Ok(config::Parsed::Run(config)) => config,
        Ok(config::Parsed::Exit(message)) => {
            println!("{message}");
            std::process::exit(0);
        }
        Err(err) => {
            eprintln!("bazaar-agent: {err:#}");
            fatal_exit(pid1);
        }
    };

    // PID 1 mounts /proc (and the console) before anything can log or read the kernel command line.
    let mut init_warnings = Vec::new();
    if pid1 {
        match init::setup() {
            Ok(warnings) => init_warnings = warnings,
            Err(err) => {
                eprintln!("bazaar-agent: guest init failed: {err:#}");
                fatal_exit(true);
            }
        }
        config.apply_kernel_cmdline();
    }
    // Before any thread exists (the logger's and tokio's come next): the launcher is forked.
    let launcher_error = match container::launcher::Launcher::start() {
        Ok(launcher) => {
            launcher.install();
            None
        }
        Err(err) => Some(format!("{err:#}")),
    };
    let log = logging::new(config.log_level);
    info!(log, "bazaar-agent starting";
        "version" => env!("CARGO_PKG_VERSION"), "pid1" => pid1, "listen" => &config.listen);
    if let Some(err) = launcher_error {
        slog::warn!(log, "no launcher: every container helper is a re-exec"; "error" => err);
    }
    for warning in init_warnings {
        slog::warn!(log, "guest init"; "warning" => warning);
    }

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(serve(config, log.clone())),
        Err(err) => Err(err).context("failed to build the tokio runtime"),
    };
    if let Err(err) = result {
        error!(log, "agent failed"; "error" => format!("{err:#}"));
    }
    fatal_exit(pid1);
}

/// Serves the agent API until the process is told to stop (host mode) or forever (PID 1).
async fn serve(config: Config, log: Logger) -> anyhow::Result<()> {
    let reaper = Reaper::start(log.new(o!("component" => "reaper")), !config.pid1)?;
    let config = Arc::new(config);
    let oom = oom::OomMonitor::start(log.new(o!("component" => "oom")))?;
    let agent = Arc::new(state::Agent::new(config.clone(), reaper, oom, log.clone()));
    let services = bazaar_protocols::agent_ttrpc::create_agent_service(Arc::new(
        service::AgentServiceImpl::new(agent.clone()),
    ));

    if let Some(path) = config.listen.strip_prefix("unix://") {
        if !path.starts_with('@') {
            // A socket file left behind by an earlier run would make bind fail.
            let _ = std::fs::remove_file(path);
        }
    }
    let mut server = ttrpc::r#async::Server::new()
        .bind(&config.listen)
        .with_context(|| format!("failed to listen on {}", config.listen))?
        .register_service(services);
    server.start().await.context("failed to start the ttrpc server")?;
    info!(log, "serving the agent API"; "listen" => &config.listen);
    if config.listen.starts_with("vsock://") {
        // CRI's PortForward; without it the pod still runs, only forwarding fails.
        if let Err(err) = forward::start(log.new(o!("component" => "forward"))) {
            slog::warn!(log, "port forwarding unavailable"; "error" => format!("{err:#}"));
        }
        ready::announce(log.clone());
    }

    if config.pid1 {
        // PID 1 never returns: the VM ends when DestroySandbox reboots it.
        std::future::pending::<()>().await;
    }
    wait_for_termination().await?;
    info!(log, "terminating: removing all containers");
    agent.remove_all_containers().await;
    let _ = server.shutdown().await;
    std::process::exit(0);
}

/// Host mode only: waits for SIGTERM or SIGINT.
async fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Ends the agent after an unrecoverable error: PID 1 ends the VM (exiting would panic the
/// kernel), a host-mode agent exits with status 1.
fn fatal_exit(pid1: bool) -> ! {
    if pid1 {
        init::end_vm();
    }
    std::process::exit(1);
}
