//! The container process after the helper's fork: builds the container's view (init) or adopts
//! it (exec), prepares the process, and execs the program. Single-threaded; every error goes back
//! to the agent over the sync socket.

use std::convert::Infallible;
use std::path::Path;

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{LinuxSeccomp, Spec};

use super::config::{HelperConfig, Mode};
use super::sync::{ErrorCode, Message, SetupError, SyncSocket};
use super::{devices, masks, mounts, namespaces, pivot, process};
use crate::sys;

/// Runs the container's init up to the exec of its program; returns only on failure.
pub fn run_init(
    config: &HelperConfig,
    seccomp: Option<&LinuxSeccomp>,
    sync: &SyncSocket,
) -> anyhow::Error {
    match init(config, seccomp, sync) {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

/// Runs an exec'd process (already inside the container's namespaces and root); returns only on
/// failure.
pub fn run_exec(
    config: &HelperConfig,
    seccomp: Option<&LinuxSeccomp>,
    sync: &SyncSocket,
) -> anyhow::Error {
    let result = common_start(sync)
        .and_then(|()| if config.terminal { attach_terminal(sync, false) } else { Ok(()) })
        .and_then(|()| process::prepare(&config.process, seccomp));
    match result {
        Ok(prepared) => prepared.exec(),
        Err(err) => err,
    }
}

/// What every container process does first: its own session, a clean signal state,
/// no inherited fds besides stdio and the sync socket.
fn common_start(sync: &SyncSocket) -> anyhow::Result<()> {
    sys::cloexec_from_3_except(sync.raw_fd()).context("mark inherited fds close-on-exec")?;
    sys::reset_signals().context("reset signal handling")?;
    nix::unistd::setsid().context("setsid")?;
    // Device nodes and mount points get exactly the modes asked for; the process's umask is set
    // later from process.user.umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    Ok(())
}

fn init(
    config: &HelperConfig,
    seccomp: Option<&LinuxSeccomp>,
    sync: &SyncSocket,
) -> anyhow::Result<Infallible> {
    let Mode::Init { spec, rootfs, no_pivot } = &config.mode else {
        bail!("run_init called for an exec");
    };
    common_start(sync)?;
    let cgroup_dir = config.cgroup_procs.as_deref().and_then(Path::parent);
    build_root(spec, rootfs, *no_pivot, config.terminal, sync, cgroup_dir)
        .context("container root setup")?;
    let prepared = process::prepare(&config.process, seccomp)?;

    sync.send(&Message::Ready).context("report ready")?;
    match sync.recv().context("wait for start")? {
        Some(Message::Start) => {}
        // The agent dropped the container before starting it.
        None => std::process::exit(1),
        Some(other) => bail!("unexpected {other:?} while waiting for start"),
    }
    Err(prepared.exec())
}

/// Mounts, devices, root switch and the protections applied inside the new root. `cgroup_dir` is
/// the container's cgroup (in the agent's tree), which a `cgroup` mount shows.
fn build_root(
    spec: &Spec,
    rootfs: &Path,
    no_pivot: bool,
    terminal: bool,
    sync: &SyncSocket,
    cgroup_dir: Option<&Path>,
) -> anyhow::Result<()> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("make / rprivate")?;
    match std::fs::metadata(rootfs) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(SetupError::new(
                ErrorCode::InvalidArgument,
                format!("rootfs {} is not a directory", rootfs.display()),
            )
            .into())
        }
        Err(err) => {
            return Err(SetupError::new(
                ErrorCode::NotFound,
                format!("rootfs {} does not exist: {err}", rootfs.display()),
            )
            .into())
        }
    }
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .context("bind the rootfs onto itself")?;
    // The shared directory is mounted nosuid,nodev in the guest; a container's root is not under
    // runc (setuid programs of the image work; devices are the device cgroup's business).
    mount(None::<&str>, rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT, None::<&str>)
        .context("remount the rootfs with suid and dev")?;

    let cgroup =
        mounts::CgroupView { dir: cgroup_dir, own_namespace: namespaces::has_own_cgroup(spec) };
    let dev_mounted =
        mounts::mount_all(rootfs, spec.mounts().as_deref().unwrap_or_default(), &cgroup)?;
    let linux = spec.linux().as_ref();
    let devices = linux.and_then(|linux| linux.devices().as_deref()).unwrap_or_default();
    devices::setup(rootfs, dev_mounted, devices).context("devices")?;

    pivot::switch_root(rootfs, no_pivot)?;
    // As runc: the terminal comes from the container's own devpts, after its mounts and before
    // the root is made read-only.
    if terminal {
        attach_terminal(sync, true)?;
    }
    create_cwd(spec)?;

    if let Some(sysctls) = linux.and_then(|linux| linux.sysctl().as_ref()) {
        for (key, value) in sysctls {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).with_context(|| format!("sysctl {key}={value}"))?;
        }
    }
    if let Some(linux) = linux {
        // runc's order: read-only paths first, then masked paths.
        masks::make_readonly(linux.readonly_paths().as_deref().unwrap_or_default())?;
        masks::mask(linux.masked_paths().as_deref().unwrap_or_default())?;
        if let Some(name) = linux.rootfs_propagation().as_deref().filter(|name| !name.is_empty()) {
            let flags = mounts::propagation_flags(name).ok_or_else(|| {
                SetupError::new(
                    ErrorCode::InvalidArgument,
                    format!("unknown rootfsPropagation {name:?}"),
                )
            })?;
            mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
                .context("set rootfsPropagation")?;
        }
    }
    if namespaces::has_own_uts(spec) {
        if let Some(hostname) = spec.hostname().as_deref().filter(|name| !name.is_empty()) {
            nix::unistd::sethostname(hostname).context("sethostname")?;
        }
        if let Some(domain) = spec.domainname().as_deref().filter(|name| !name.is_empty()) {
            set_domainname(domain)?;
        }
    }
    if spec.root().as_ref().and_then(|root| root.readonly()) == Some(true) {
        pivot::make_root_readonly()?;
    }
    Ok(())
}

/// Creates the process's working directory when the image lacks it, as runc does (mode 0755,
/// owned by root, before the root is made read-only and before the user switch).
fn create_cwd(spec: &Spec) -> anyhow::Result<()> {
    let Some(cwd) = spec.process().as_ref().map(|process| process.cwd().clone()) else {
        return Ok(());
    };
    if cwd.is_absolute() && !cwd.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&cwd)
            .with_context(|| format!("create cwd {}", cwd.display()))?;
    }
    Ok(())
}

/// Opens a pty from the container's `/dev/ptmx` (this process is inside the container's root),
/// makes its slave stdin, stdout, stderr and the controlling terminal (the process leads its own
/// session already), binds it over `/dev/console` for an init, and sends the master to the agent.
fn attach_terminal(sync: &SyncSocket, bind_console: bool) -> anyhow::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    let (master, slave) = sys::open_pty().context(
        "open a terminal from the container's /dev/ptmx (is devpts mounted on /dev/pts?)",
    )?;
    if bind_console {
        let number = sys::pty_number(master.as_fd()).context("find the terminal's number")?;
        devices::bind_console(&Path::new("/dev/pts").join(number.to_string()))?;
    }
    nix::unistd::dup2_stdin(&slave).context("make the terminal stdin")?;
    nix::unistd::dup2_stdout(&slave).context("make the terminal stdout")?;
    nix::unistd::dup2_stderr(&slave).context("make the terminal stderr")?;
    drop(slave);
    sys::set_controlling_tty(0).context("make the terminal the controlling terminal")?;
    sync.send_with_fd(&Message::Console, master.as_raw_fd()).context("send the terminal")?;
    Ok(())
}

fn set_domainname(name: &str) -> anyhow::Result<()> {
    super::kernel::set_domainname(name).context("setdomainname")
}
