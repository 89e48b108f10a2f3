//! seccomp-BPF filters, one per kind of VMM thread, so that a guest that takes over a vCPU or a
//! device thread (through a device-model bug) can make only the system calls that thread needs.
//!
//! Filters are built with rust-vmm's `seccompiler` (BPF compiled in-process) and installed per
//! thread, each thread at its own start. A filter is inherited by the threads its thread spawns
//! afterwards, hence the order in the VMM: device worker threads are spawned before any filter,
//! vCPU threads install theirs first thing, and the main thread installs its own only after
//! spawning them.
//!
//! A system call outside the filter kills the whole process ([`Mode::Kill`]): the runtime sees
//! the VMM exit and cleans up, as for any VMM crash. [`Mode::Log`] lets it through and has the
//! kernel log it (to find a missing entry), [`Mode::None`] installs nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The kinds of thread in the VMM, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM is set up: waits for the VM to stop, writes the console.
    Vmm,
    /// A vCPU thread: KVM_RUN, and the I/O of the devices emulated on it (serial output,
    /// interrupt and exit eventfds).
    Vcpu,
    /// A virtio device worker: epoll, its sockets, files and eventfds.
    Device,
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
        })
    }
}

/// What a filter does with a system call it does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Kill the process (the default).
    #[default]
    Kill,
    /// Allow it, and have the kernel log it (audit or kernel log): for finding what a filter
    /// lacks.
    Log,
    /// Install no filter (debugging only).
    None,
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "kill" => Ok(Mode::Kill),
            "log" => Ok(Mode::Log),
            "none" => Ok(Mode::None),
            other => Err(Error::UnknownMode(other.to_string())),
        }
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// seccompiler refused the rules (a bug in this module).
    #[error("cannot build the {kind} seccomp filter: {source}")]
    Build {
        kind: ThreadKind,
        #[source]
        source: BackendError,
    },
    /// The kernel refused the filter (no seccomp support, or prctl failed).
    #[error("cannot install the {kind} seccomp filter: {source}")]
    Install {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    /// A mode name other than kill, log or none.
    #[error("unknown seccomp mode {0:?}: expected kill, log or none")]
    UnknownMode(String),
}

/// The mode device worker threads use, as `Mode as u8 + 1`; 0 = never set (no filter).
static DEVICE_MODE: AtomicU8 = AtomicU8::new(0);

/// Sets the mode of [`apply_device_filter`] for the whole process. The VMM sets it before it
/// builds devices; device models are library code that does not know the process's policy, so
/// they read it from here rather than from every constructor. Unset (unit tests of a device
/// model), device threads run unfiltered.
pub fn set_device_mode(mode: Mode) {
    let value = match mode {
        Mode::Kill => 1,
        Mode::Log => 2,
        Mode::None => 3,
    };
    DEVICE_MODE.store(value, Ordering::SeqCst);
}

/// Installs the [`ThreadKind::Device`] filter on the calling device worker thread, in the mode
/// [`set_device_mode`] chose (nothing if it was never called). Called first thing by each
/// worker thread.
pub fn apply_device_filter() -> Result<(), Error> {
    let mode = match DEVICE_MODE.load(Ordering::SeqCst) {
        1 => Mode::Kill,
        2 => Mode::Log,
        _ => return Ok(()),
    };
    apply(ThreadKind::Device, mode)
}

/// Installs `kind`'s filter on the calling thread (nothing in [`Mode::None`]). Threads this
/// thread spawns afterwards inherit it.
pub fn apply(kind: ThreadKind, mode: Mode) -> Result<(), Error> {
    match compile(kind, mode)? {
        Some(program) => {
            seccompiler::apply_filter(&program).map_err(|source| Error::Install { kind, source })
        }
        None => Ok(()),
    }
}

/// `kind`'s filter as a BPF program, or `None` in [`Mode::None`].
fn compile(kind: ThreadKind, mode: Mode) -> Result<Option<BpfProgram>, Error> {
    let mismatch = match mode {
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::None => return Ok(None),
    };
    let build = |source| Error::Build { kind, source };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(build)?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = rules(kind).map_err(build)?.into_iter().collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(build)?;
    Ok(Some(BpfProgram::try_from(filter).map_err(build)?))
}

/// A system call and the argument patterns it is allowed with (none: any arguments).
type Rule = (i64, Vec<SeccompRule>);

/// `KVM_RUN`: `_IO(KVMIO = 0xae, 0x80)`.
const KVM_RUN: u64 = 0xae80;

fn allow(syscall: libc::c_long) -> Rule {
    (syscall, Vec::new())
}

/// Allows `syscall` when its 32-bit argument `arg` is one of `values`. The compare covers the
/// low 32 bits, which is all the kernel reads of an `int` or `unsigned int` argument.
fn allow_arg32(syscall: libc::c_long, arg: u8, values: &[u64]) -> Result<Rule, BackendError> {
    let rules = values
        .iter()
        .map(|&v| {
            let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
            SeccompRule::new(vec![cond])
        })
        .collect::<Result<_, _>>()?;
    Ok((syscall, rules))
}

/// Allows `syscall` when the bits `mask` of its 64-bit argument `arg` equal `value`.
fn allow_masked(
    syscall: libc::c_long,
    arg: u8,
    mask: u64,
    value: u64,
) -> Result<Rule, BackendError> {
    let op = SeccompCmpOp::MaskedEq(mask);
    let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)?;
    Ok((syscall, vec![SeccompRule::new(vec![cond])?]))
}

/// The rules of `kind`'s filter: what every thread needs, plus its own.
fn rules(kind: ThreadKind) -> Result<Vec<Rule>, BackendError> {
    let mut rules = common_rules()?;
    rules.extend(match kind {
        ThreadKind::Vmm => vmm_rules(),
        ThreadKind::Vcpu => vcpu_rules()?,
        ThreadKind::Device => device_rules()?,
    });
    Ok(rules)
}

/// What any thread of this process does: lock, allocate, write, drop an fd, end.
fn common_rules() -> Result<Vec<Rule>, BackendError> {
    let anonymous = libc::MAP_ANONYMOUS as u64;
    Ok(vec![
        // std's Mutex, Condvar, channels and thread parking wait on futexes.
        allow(libc::SYS_futex),
        // std's channels back off with sched_yield while another thread holds a slot.
        allow(libc::SYS_sched_yield),
        // The allocator: brk for the main heap; anonymous mmap for thread arenas and large
        // blocks (never a file, so nothing new gets mapped); mremap to grow them; munmap and
        // madvise to give memory back (glibc also drops an ended thread's stack with madvise).
        allow(libc::SYS_brk),
        allow_masked(libc::SYS_mmap, 3, anonymous, anonymous)?,
        allow(libc::SYS_mremap),
        allow(libc::SYS_munmap),
        allow(libc::SYS_madvise),
        // The allocator changes the protection of arena pages, never to executable: a guest
        // that got code into host memory cannot make it runnable.
        allow_masked(libc::SYS_mprotect, 2, libc::PROT_EXEC as u64, 0)?,
        // Every thread writes: console output, eventfd signals, panic messages on stderr.
        allow(libc::SYS_write),
        // An fd (a vCPU's, an eventfd, a connection) is closed when its owner is dropped;
        // with debug assertions std first checks that it is still open (fcntl F_GETFD).
        allow(libc::SYS_close),
        allow_arg32(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64])?,
        // Returning from a signal handler (std's stack-overflow handler, a vCPU kick).
        allow(libc::SYS_rt_sigreturn),
        // glibc blocks signals while a thread ends and in abort().
        allow(libc::SYS_rt_sigprocmask),
        // A Rust thread removes its alternate signal stack when it ends.
        allow(libc::SYS_sigaltstack),
        // A thread ends; the process ends (main returning, or std::process::exit anywhere).
        allow(libc::SYS_exit),
        allow(libc::SYS_exit_group),
        // abort() (a failed assertion) sends SIGABRT to its own thread, so that a crash reads
        // as an abort rather than as a seccomp kill.
        allow(libc::SYS_getpid),
        allow(libc::SYS_gettid),
        allow_arg32(libc::SYS_tgkill, 2, &[libc::SIGABRT as u64])?,
        // Instant::now() and timed waits (a vCPU waiting for a device thread's answer, the
        // vsock timeouts) read the clock; the vDSO answers without a system call only where
        // the host's clocksource allows it.
        allow(libc::SYS_clock_gettime),
        // glibc's malloc reads /proc/sys/vm/overcommit_memory the first time a thread's heap
        // shrinks (read-only, close-on-exec): nothing else opens files after setup.
        allow_arg32(libc::SYS_openat, 2, &[(libc::O_RDONLY | libc::O_CLOEXEC) as u64])?,
        allow(libc::SYS_read),
    ])
}

/// The main thread after setup: it waits for a vCPU to report the VM stopped (a channel, or
/// the exit eventfd), prints why, tears the VM down and exits. Console writes and the
/// tear-down (close, munmap) are common rules.
fn vmm_rules() -> Vec<Rule> {
    vec![
        // Waiting on the exit eventfd together with other sources.
        allow(libc::SYS_epoll_wait),
        allow(libc::SYS_epoll_pwait),
        // Once the VM stopped, the vsock devices' listening socket files are removed, so a
        // standalone run leaves nothing behind.
        allow(libc::SYS_unlink),
        allow(libc::SYS_unlinkat),
    ]
}

/// A vCPU thread. The devices on the port I/O and MMIO buses run here: the serial port writes
/// the console and its interrupt eventfd, the i8042 the exit eventfd (all `write`, a common
/// rule). Setup ioctls (registers, CPUID, MSRs) are made before the thread starts.
fn vcpu_rules() -> Result<Vec<Rule>, BackendError> {
    Ok(vec![
        // Entering the guest is the only ioctl a running vCPU makes.
        allow_arg32(libc::SYS_ioctl, 1, &[KVM_RUN])?,
    ])
}

/// A virtio device worker: waits on epoll for queue notifications (ioeventfds) and host-side
/// readiness, moves data between guest buffers and its backend (a Unix socket for vsock, a tap
/// for net, a file for block, the host's random source for rng), and signals the guest through
/// its interrupt eventfd (`write`, a common rule).
fn device_rules() -> Result<Vec<Rule>, BackendError> {
    Ok(vec![
        // The worker's event loop.
        allow(libc::SYS_epoll_wait),
        allow(libc::SYS_epoll_pwait),
        allow(libc::SYS_epoll_ctl),
        // Clearing an eventfd; socket and tap data, scattered or not (`read` is common).
        allow(libc::SYS_readv),
        allow(libc::SYS_writev),
        // Stream sockets of the vsock backend, with ancillary data where needed.
        allow(libc::SYS_recvmsg),
        allow(libc::SYS_sendmsg),
        // std's UnixStream reads with recv(2) and vhost-user replies may come the same way:
        // glibc makes recv and send the recvfrom and sendto system calls.
        allow(libc::SYS_recvfrom),
        allow(libc::SYS_sendto),
        // The vsock backend accepts host connections on its Unix socket and connects to host
        // listeners for guest-initiated connections: Unix sockets only.
        allow(libc::SYS_accept4),
        allow(libc::SYS_connect),
        allow_arg32(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?,
        // A vsock connection the guest closed in one direction.
        allow(libc::SYS_shutdown),
        // std's set_nonblocking on an accepted or connected socket is ioctl(FIONBIO); the net
        // device sets the tap's offloads to what the driver accepted when it is activated.
        allow_arg32(libc::SYS_ioctl, 1, &[libc::FIONBIO, libc::TUNSETOFFLOAD])?,
        // Block device requests: reads and writes at an offset, and flushes.
        allow(libc::SYS_pread64),
        allow(libc::SYS_pwrite64),
        allow(libc::SYS_fsync),
        allow(libc::SYS_fdatasync),
        // virtio-rng fills guest buffers from the host's random source.
        allow(libc::SYS_getrandom),
    ])
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
