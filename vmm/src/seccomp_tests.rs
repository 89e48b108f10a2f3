//! Filter tests. Behaviour is checked in forked children: a filter cannot be removed once
//! installed, and a kill would end the test process. The child makes raw system calls only
//! (no allocation, no locks), which is what makes forking a threaded test process sound.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::*;

const KINDS: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Device];
/// Any other KVM vCPU ioctl: `KVM_GET_REGS`, `_IOR(KVMIO, 0x81, struct kvm_regs)`.
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// How a forked child ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Signaled(i32),
}

/// Exit code of a child whose filter could not be installed.
const INSTALL_FAILED: i32 = 100;

/// Runs `body` in a forked child under `kind`'s filter in `mode`; the child exits with what
/// `body` returns.
fn in_child(kind: ThreadKind, mode: Mode, body: fn() -> i32) -> End {
    // Compiled here: the child must not allocate.
    let program = compile(kind, mode).expect("filter builds").expect("a filter in this mode");
    // SAFETY: the child runs only raw system calls (setrlimit, prctl and seccomp through
    // apply_filter, `body`'s calls) and `_exit`; it touches no lock or allocator state another
    // thread of this process may have held at fork time.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: plain system calls on values owned by this frame; `_exit` never returns.
        unsafe {
            // A kill must not leave a core file behind.
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            let code = match seccompiler::apply_filter(&program) {
                Ok(()) => body(),
                Err(_) => INSTALL_FAILED,
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above, writing its status into a local.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFSIGNALED(status) {
        End::Signaled(libc::WTERMSIG(status))
    } else {
        End::Exited(libc::WEXITSTATUS(status))
    }
}

/// Makes a system call no filter lists.
fn call_getppid() -> i32 {
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { libc::getppid() };
    0
}

/// ioctl(-1, KVM_RUN): the filter lets it through to the kernel, which answers EBADF.
fn call_kvm_run_on_a_bad_fd() -> i32 {
    // SAFETY: an ioctl on an invalid fd touches no memory; it fails with EBADF.
    let rc = unsafe { libc::ioctl(-1, KVM_RUN as libc::c_ulong) };
    i32::from(!(rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)))
}

fn call_kvm_get_regs_on_a_bad_fd() -> i32 {
    // SAFETY: as above; the invalid fd means the kernel never reads the (null) argument.
    unsafe { libc::ioctl(-1, KVM_GET_REGS as libc::c_ulong, std::ptr::null_mut::<u8>()) };
    0
}

fn open_socket(domain: libc::c_int) -> i32 {
    // SAFETY: creates and closes a socket owned by this function.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return 1;
        }
        libc::close(fd);
    }
    0
}

fn open_unix_socket() -> i32 {
    open_socket(libc::AF_UNIX)
}

fn open_inet_socket() -> i32 {
    open_socket(libc::AF_INET)
}

/// Maps an anonymous page and makes it read-write: what the allocator does.
fn map_anonymous_read_write() -> i32 {
    // SAFETY: maps, reprotects and unmaps a fresh private page this function owns.
    unsafe {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let page = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_NONE, flags, -1, 0);
        if page == libc::MAP_FAILED
            || libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_WRITE) != 0
        {
            return 1;
        }
        libc::munmap(page, 4096);
    }
    0
}

/// Makes an anonymous page executable: what an exploit needs.
fn make_a_page_executable() -> i32 {
    // SAFETY: as above; the page is never executed.
    unsafe {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let page = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, flags, -1, 0);
        if page == libc::MAP_FAILED {
            return 1;
        }
        libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC);
    }
    0
}

#[test]
fn every_filter_builds_and_none_builds_nothing() {
    for kind in KINDS {
        for mode in [Mode::Kill, Mode::Log] {
            let program = compile(kind, mode).expect("builds").expect("a filter");
            assert!(!program.is_empty(), "{kind} {mode:?}");
        }
        assert!(compile(kind, Mode::None).expect("builds").is_none());
    }
}

#[test]
fn no_system_call_is_listed_twice() {
    // Two entries for one call would silently replace each other when collected.
    for kind in KINDS {
        let rules = rules(kind).expect("rules");
        let unique: BTreeSet<i64> = rules.iter().map(|(nr, _)| *nr).collect();
        assert_eq!(unique.len(), rules.len(), "{kind} lists a system call twice");
    }
}

#[test]
fn modes_parse_from_their_names() {
    assert_eq!("kill".parse::<Mode>().expect("kill"), Mode::Kill);
    assert_eq!("log".parse::<Mode>().expect("log"), Mode::Log);
    assert_eq!("none".parse::<Mode>().expect("none"), Mode::None);
    assert!(matches!("off".parse::<Mode>(), Err(Error::UnknownMode(m)) if m == "off"));
    assert_eq!(Mode::default(), Mode::Kill);
}

#[test]
fn kill_mode_kills_the_process_on_an_unlisted_call() {
    for kind in KINDS {
        assert_eq!(in_child(kind, Mode::Kill, call_getppid), End::Signaled(libc::SIGSYS), "{kind}");
    }
}

#[test]
fn log_mode_lets_an_unlisted_call_through() {
    for kind in KINDS {
        assert_eq!(in_child(kind, Mode::Log, call_getppid), End::Exited(0), "{kind}");
    }
}

#[test]
fn vcpu_filter_allows_kvm_run_and_no_other_ioctl() {
    let kind = ThreadKind::Vcpu;
    assert_eq!(in_child(kind, Mode::Kill, call_kvm_run_on_a_bad_fd), End::Exited(0));
    let other = in_child(kind, Mode::Kill, call_kvm_get_regs_on_a_bad_fd);
    assert_eq!(other, End::Signaled(libc::SIGSYS));
    // The main thread has no business entering the guest.
    let vmm = in_child(ThreadKind::Vmm, Mode::Kill, call_kvm_run_on_a_bad_fd);
    assert_eq!(vmm, End::Signaled(libc::SIGSYS));
}

#[test]
fn device_filter_allows_unix_sockets_only() {
    let kind = ThreadKind::Device;
    assert_eq!(in_child(kind, Mode::Kill, open_unix_socket), End::Exited(0));
    assert_eq!(in_child(kind, Mode::Kill, open_inet_socket), End::Signaled(libc::SIGSYS));
    let vcpu = in_child(ThreadKind::Vcpu, Mode::Kill, open_unix_socket);
    assert_eq!(vcpu, End::Signaled(libc::SIGSYS), "vCPU threads open no sockets");
}

#[test]
fn memory_can_be_allocated_but_not_made_executable() {
    for kind in KINDS {
        assert_eq!(in_child(kind, Mode::Kill, map_anonymous_read_write), End::Exited(0), "{kind}");
        let exec = in_child(kind, Mode::Kill, make_a_page_executable);
        assert_eq!(exec, End::Signaled(libc::SIGSYS), "{kind}");
    }
}

/// What a device worker does in use, each as a raw call on a socket pair or /dev/null: recv and
/// send (std's UnixStream read and write: recvfrom and sendto), the tap offload ioctl (on a
/// socket it fails with ENOTTY, after the filter let it through), fdatasync (a FLUSH), and a
/// clock read. A kill would end the child with SIGSYS instead of exit code 0.
fn device_io_calls() -> i32 {
    let pair = [SOCKET_PAIR[0].load(Ordering::SeqCst), SOCKET_PAIR[1].load(Ordering::SeqCst)];
    // SAFETY: raw calls on the socket pair the parent made before forking, and on locals.
    unsafe {
        let byte = [7u8];
        let mut got = [0u8];
        if libc::send(pair[0], byte.as_ptr().cast(), 1, 0) != 1
            || libc::recv(pair[1], got.as_mut_ptr().cast(), 1, 0) != 1
        {
            return 2;
        }
        libc::ioctl(pair[0], libc::TUNSETOFFLOAD as libc::c_ulong, 0 as libc::c_ulong);
        libc::fdatasync(pair[0]);
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut now);
    }
    0
}

/// The socket pair `device_io_calls` uses, made by the parent (a device thread never creates
/// one: its sockets come from accept or connect).
static SOCKET_PAIR: [std::sync::atomic::AtomicI32; 2] =
    [std::sync::atomic::AtomicI32::new(-1), std::sync::atomic::AtomicI32::new(-1)];

/// glibc's malloc reading /proc/sys/vm/overcommit_memory, as it does on any thread.
fn malloc_reads_overcommit() -> i32 {
    // SAFETY: opens, reads into a local and closes a descriptor owned by this function.
    unsafe {
        let fd = libc::openat(
            libc::AT_FDCWD,
            c"/proc/sys/vm/overcommit_memory".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return 1;
        }
        let mut buf = [0u8; 8];
        libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
    }
    0
}

/// Opening a file for writing is not what malloc does, and stays refused.
fn open_for_writing() -> i32 {
    // SAFETY: the call names a path in a local C string; the descriptor is closed if opened.
    unsafe {
        let fd =
            libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::close(fd);
        }
    }
    0
}

#[test]
fn device_filter_allows_the_calls_devices_make_in_use() {
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two descriptors into the local array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    SOCKET_PAIR[0].store(pair[0], Ordering::SeqCst);
    SOCKET_PAIR[1].store(pair[1], Ordering::SeqCst);
    let end = in_child(ThreadKind::Device, Mode::Kill, device_io_calls);
    // SAFETY: closes the two descriptors made above, which nothing else uses.
    unsafe {
        libc::close(pair[0]);
        libc::close(pair[1]);
    }
    assert_eq!(end, End::Exited(0));
}

#[test]
fn every_thread_may_let_malloc_read_overcommit_but_not_open_files_for_writing() {
    for kind in KINDS {
        assert_eq!(in_child(kind, Mode::Kill, malloc_reads_overcommit), End::Exited(0), "{kind}");
        assert_eq!(
            in_child(kind, Mode::Kill, open_for_writing),
            End::Signaled(libc::SIGSYS),
            "{kind}"
        );
    }
}
