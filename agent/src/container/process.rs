//! The per-process part of a container setup, shared by a container's init and exec'd
//! processes: rlimits, seccomp, capabilities, user and groups, umask, working directory,
//! environment and the program to run. Runs in the container process, inside the container's
//! root, in runc's order: seccomp first when it cannot wait (no `noNewPrivileges`), then the
//! bounding set, the user switch with the permitted set kept, the other capability sets,
//! `no_new_privs`, and seccomp last when it can.

use std::ffi::CString;
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxSeccomp, PosixRlimit, PosixRlimitType, Process};

use super::exec::{self, Program, DEFAULT_PATH};
use super::seccomp::{self, Filter};
use super::sync::{ErrorCode, SetupError};
use super::{caps, user};
use crate::sys;

/// A process ready to exec: its program, and the seccomp filter still to install right before
/// `execve` (with `noNewPrivileges`).
#[derive(Debug)]
pub struct Prepared {
    pub program: Program,
    late_filter: Option<Filter>,
}

impl Prepared {
    /// Installs the late seccomp filter and replaces this process with the program; returns only
    /// on failure.
    pub fn exec(self) -> anyhow::Error {
        if let Some(filter) = &self.late_filter {
            if let Err(err) = filter.install() {
                return anyhow::Error::from(err).context("install the seccomp filter");
            }
        }
        exec::exec(&self.program)
    }
}

/// Applies the process settings to the calling process and resolves its program. `profile` is
/// the container's `linux.seccomp`.
pub fn prepare(process: &Process, profile: Option<&LinuxSeccomp>) -> anyhow::Result<Prepared> {
    let args = process.args().as_deref().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return Err(
            SetupError::new(ErrorCode::InvalidArgument, "process.args must not be empty").into()
        );
    };
    let no_new_privs = process.no_new_privileges() == Some(true);
    let filter = seccomp::filter_for(profile)?;

    for rlimit in process.rlimits().as_deref().unwrap_or_default() {
        set_rlimit(rlimit)?;
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).context("set oom_score_adj")?;
    }
    // Without no_new_privs a filter needs CAP_SYS_ADMIN, which the process still has now. The
    // vsock guard alone is installed now in any case.
    let late_filter = if no_new_privs && profile.is_some() {
        Some(filter)
    } else {
        filter.install().context("install the seccomp filter")?;
        None
    };
    let capabilities = process.capabilities().as_ref();
    if let Some(bounding) = capabilities.and_then(|caps| caps.bounding().as_ref()) {
        caps::restrict_bounding_set(bounding)?;
    }

    // As runc: the working directory is entered as root first (a directory the user may not
    // search is fine), and again after the user switch if root was refused (a volume only the
    // user may enter).
    let cwd = process.cwd();
    let cwd_pending = match nix::unistd::chdir(cwd) {
        Ok(()) => false,
        Err(Errno::EACCES | Errno::EPERM) => true,
        Err(err) => return Err(cwd_error(cwd, err).into()),
    };

    let spec_user = process.user();
    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let ids = resolve_ids(process, passwd.as_deref())?;
    if capabilities.is_some() {
        caps::keep_across_setuid(true)?;
    }
    let groups: Vec<Gid> = ids.groups.iter().map(|gid| Gid::from_raw(*gid)).collect();
    nix::unistd::setgroups(&groups).context("setgroups")?;
    let gid = Gid::from_raw(ids.gid);
    nix::unistd::setresgid(gid, gid, gid).with_context(|| format!("setgid {gid}"))?;
    let uid = Uid::from_raw(ids.uid);
    nix::unistd::setresuid(uid, uid, uid).with_context(|| format!("setuid {uid}"))?;
    if cwd_pending {
        nix::unistd::chdir(cwd).map_err(|err| cwd_error(cwd, err))?;
    }
    if let Some(capabilities) = capabilities {
        caps::keep_across_setuid(false)?;
        caps::apply(capabilities)?;
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(spec_user.umask().unwrap_or(0o022)));

    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|var| var.starts_with("HOME=")) {
        env.push(format!("HOME={}", user::home_for_uid(passwd.as_deref(), ids.uid)));
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|var| var.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let program = exec::lookup(arg0, &path_var, exec::probe)?;

    if no_new_privs {
        sys::set_no_new_privs().context("set no_new_privs")?;
    }
    let program = Program {
        path: c_string(program.to_string_lossy().as_ref(), "the program path")?,
        argv: args.iter().map(|arg| c_string(arg, "process.args")).collect::<Result<_, _>>()?,
        env: env.iter().map(|var| c_string(var, "process.env")).collect::<Result<_, _>>()?,
    };
    Ok(Prepared { program, late_filter })
}

fn cwd_error(cwd: &Path, err: Errno) -> SetupError {
    SetupError::new(
        ErrorCode::InvalidArgument,
        format!(
            "chdir to cwd ({:?}) set in config.json failed: {}",
            cwd.display().to_string(),
            err.desc()
        ),
    )
}

/// The ids a process runs with.
struct Ids {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

/// The numeric ids of `process.user`. A `username`, when given, is looked up in the container's
/// `/etc/passwd` (uid, gid) and `/etc/group` (supplementary groups, added to additionalGids).
fn resolve_ids(process: &Process, passwd: Option<&str>) -> Result<Ids, SetupError> {
    let spec_user = process.user();
    let mut ids = Ids {
        uid: spec_user.uid(),
        gid: spec_user.gid(),
        groups: spec_user.additional_gids().clone().unwrap_or_default(),
    };
    let Some(name) = spec_user.username().as_deref().filter(|name| !name.is_empty()) else {
        return Ok(ids);
    };
    let entries = user::parse_passwd(passwd.unwrap_or_default());
    let entry = user::find_by_name(&entries, name).ok_or_else(|| {
        SetupError::new(
            ErrorCode::NotFound,
            format!("unable to find user {name}: no matching entries in passwd file"),
        )
    })?;
    ids.uid = entry.uid;
    ids.gid = entry.gid;
    let group_file = std::fs::read_to_string("/etc/group").unwrap_or_default();
    for gid in user::supplementary_gids(&user::parse_group(&group_file), name) {
        if !ids.groups.contains(&gid) {
            ids.groups.push(gid);
        }
    }
    Ok(ids)
}

fn c_string(value: &str, what: &str) -> Result<CString, SetupError> {
    CString::new(value).map_err(|_| {
        SetupError::new(
            ErrorCode::InvalidArgument,
            format!("{what} contains a NUL byte: {value:?}"),
        )
    })
}

fn set_rlimit(rlimit: &PosixRlimit) -> anyhow::Result<()> {
    let resource = match rlimit.typ() {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    sys::setrlimit(resource as libc::c_int, rlimit.soft(), rlimit.hard()).with_context(|| {
        format!("setrlimit {:?} to {}/{}", rlimit.typ(), rlimit.soft(), rlimit.hard())
    })
}
