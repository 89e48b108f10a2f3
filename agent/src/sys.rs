//! Thin wrappers around the system calls that nix does not cover (or not with the features the
//! workspace enables). The unsafe code of the agent is concentrated here.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Turns a `-1` return into the `errno` error.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `pidfd_open(2)`: a file descriptor that refers to exactly this process, immune to pid reuse.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(2)` without siginfo.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: the fd is valid for the call; a null siginfo is allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// `kill(2)` with a raw signal number (nix's `Signal` has no real-time signals).
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: plain system call with integer arguments.
    check(unsafe { libc::kill(pid, signal) } as libc::c_long)?;
    Ok(())
}

/// Makes this process a child subreaper: orphaned descendants are reparented to it.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } as libc::c_long)?;
    Ok(())
}

/// Ends the machine with an immediate reboot (PID 1 only; in a child PID namespace it ends that
/// namespace). See [`crate::init::end_vm`] for why a reboot and not a power-off.
pub fn reboot_now() -> io::Error {
    // SAFETY: reboot with a valid command; on success it does not return.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    io::Error::last_os_error()
}

/// Sets or clears `FD_CLOEXEC`; called between fork and exec, so it only uses `fcntl`.
pub fn set_cloexec(fd: RawFd, cloexec: bool) -> io::Result<()> {
    let flags = if cloexec { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: fcntl on an fd number; an invalid fd yields EBADF.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } as libc::c_long)?;
    Ok(())
}

/// Sets `O_NONBLOCK` on an fd.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a valid fd.
    let flags = check(unsafe { libc::fcntl(raw, libc::F_GETFL) } as libc::c_long)?;
    // SAFETY: fcntl on a valid fd.
    check(unsafe { libc::fcntl(raw, libc::F_SETFL, flags as libc::c_int | libc::O_NONBLOCK) }
        as libc::c_long)?;
    Ok(())
}

/// Marks every fd from 3 up close-on-exec except `keep`.
pub fn cloexec_from_3_except(keep: RawFd) -> io::Result<()> {
    let ranges = [(3, keep - 1), (keep + 1, RawFd::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
        check(unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                last as libc::c_uint,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        })?;
    }
    Ok(())
}

/// Opens a new pseudo terminal pair from `/dev/ptmx` (of the devpts that the current root
/// shows): (master, slave).
/// The slave is opened with `TIOCGPTPEER`, so no `/dev/pts/N` path (and no libc `grantpt`, which
/// could look up a "tty" group) is involved.
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let path = c"/dev/ptmx";
    // SAFETY: open with a valid C string.
    let master =
        check(
            unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) }
                as libc::c_long,
        )?;
    // SAFETY: a new fd that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master as RawFd) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the pointer.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } as libc::c_long)?;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let slave = check(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    // SAFETY: a new fd that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave as RawFd) };
    Ok((master, slave))
}

/// The number N of the pty whose master is `master` (its slave is /dev/pts/N).
pub fn pty_number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut number: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int to the pointer.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) } as libc::c_long)?;
    Ok(number)
}

/// Sets the window size of a terminal.
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, columns: u16) -> io::Result<()> {
    let size = libc::winsize { ws_row: rows, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } as libc::c_long)?;
    Ok(())
}

/// Makes the terminal on `fd` the controlling terminal of this (session leader) process.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } as libc::c_long)?;
    Ok(())
}

/// `setrlimit(2)` for a raw resource number.
pub fn setrlimit(resource: libc::c_int, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit reads an rlimit from the pointer. The resource type differs between libcs.
    check(unsafe { libc::setrlimit(resource as _, &limit) } as libc::c_long)?;
    Ok(())
}

/// Drops a capability from the bounding set.
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }
        as libc::c_long)?;
    Ok(())
}

/// Sets `no_new_privs`.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long)?;
    Ok(())
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> io::Result<String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct we pass.
    check(unsafe { libc::uname(&mut uts) } as libc::c_long)?;
    // SAFETY: the kernel NUL-terminates every utsname field.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

/// Brings a network interface up (`ip link set NAME up`).
pub fn interface_up(name: &str) -> io::Result<()> {
    // SAFETY: socket with constant arguments.
    let sock =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long)?;
    // SAFETY: a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(sock as RawFd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the ifreq we pass.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as libc::c_long)?;
    // SAFETY: after SIOCGIFFLAGS the flags member of the union is the initialised one.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as libc::c_long)?;
    Ok(())
}

/// Resets every signal disposition to the default and unblocks all signals, so that a container
/// process does not inherit the agent's ignored SIGPIPE (Rust ignores it at start-up).
pub fn reset_signals() -> io::Result<()> {
    for signal in 1..libc::SIGRTMIN() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing the default disposition; no handler code is involved.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to an initialised set.
    unsafe {
        libc::sigemptyset(&mut set);
        check(libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) as libc::c_long)?;
    }
    Ok(())
}

/// Makes an fd non-blocking and registers it with tokio's reactor.
pub fn register_async(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    set_nonblocking(fd.as_fd())?;
    // SAFETY: an OwnedFd stays open and names the same file description for as long as the
    // AsyncFd owns it, and its as_raw_fd always returns that fd.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Whether an fd number is open.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any number is harmless; a closed one gives EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// `dup2(2)` onto a given fd number (for PID 1's missing stdio only).
pub fn dup_onto(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 with two fd numbers; the target is closed or replaced atomically.
    check(unsafe { libc::dup2(fd, target) } as libc::c_long)?;
    Ok(())
}
