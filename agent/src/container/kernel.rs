//! The raw system calls of the container setup that neither nix nor [`crate::sys`] wraps:
//! capability sets (`capset`, ambient, keep-caps), seccomp filters and eBPF device programs. The
//! unsafe code of [`super::caps`], [`super::seccomp`] and [`super::cgroups`] lives here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Turns a negative return into the `errno` error.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The effective, permitted and inheritable sets of a thread, one bit per capability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

/// `capset(2)` for the calling thread.
pub fn capset(sets: &CapSets) -> io::Result<()> {
    let header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let half = |set: u64, high: bool| if high { (set >> 32) as u32 } else { set as u32 };
    let data: [CapData; 2] = [false, true].map(|high| CapData {
        effective: half(sets.effective, high),
        permitted: half(sets.permitted, high),
        inheritable: half(sets.inheritable, high),
    });
    // SAFETY: the header and the two data structs are valid for the call, in the layout the
    // kernel expects for version 3.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })?;
    Ok(())
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the prctl options used here take integer arguments only.
    check(unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) }
        as libc::c_long)?;
    Ok(())
}

/// `PR_SET_KEEPCAPS`: keep the permitted set across a switch away from uid 0.
pub fn set_keep_caps(keep: bool) -> io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, u64::from(keep) as libc::c_ulong, 0)
}

/// Empties the ambient set.
pub fn ambient_clear_all() -> io::Result<()> {
    prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0)
}

/// Raises one capability in the ambient set (it must be permitted and inheritable).
pub fn ambient_raise(cap: u32) -> io::Result<()> {
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
        libc::c_ulong::from(cap),
    )
}

/// `setdomainname(2)`: the NIS domain name of the UTS namespace (works where /proc/sys is
/// read-only).
pub fn set_domainname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`, valid for the call.
    check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) } as libc::c_long)?;
    Ok(())
}

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const SockFilter,
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`: installs a filter on the calling thread.
/// Needs no_new_privs or CAP_SYS_ADMIN.
pub fn seccomp_set_filter(program: &[SockFilter], flags: u32) -> io::Result<()> {
    let len = libc::c_ushort::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp program too long"))?;
    let prog = SockFprog { len, filter: program.as_ptr() };
    // SAFETY: prog points at `len` valid instructions for the duration of the call; the kernel
    // copies them.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            libc::c_ulong::from(flags),
            &prog as *const SockFprog,
        )
    })?;
    Ok(())
}

/// One eBPF instruction (`struct bpf_insn`); `regs` holds dst (low nibble) and src (high).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` attach type.
const BPF_CGROUP_DEVICE: u32 = 6;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program; on a verifier error the message carries the
/// verifier's log. The load that succeeds runs without a log: the verifier's logging of every
/// state it walks multiplies its work, and every container start pays it (under TCG, in
/// translated kernel code too). Only a failed load is repeated with the log, to explain itself.
pub fn load_device_program(program: &[BpfInsn]) -> io::Result<OwnedFd> {
    match prog_load(program, None) {
        Ok(fd) => Ok(fd),
        Err(_) => {
            let mut log = vec![0u8; 16 * 1024];
            let err = match prog_load(program, Some(&mut log)) {
                // Not expected (the same program, loaded twice): keep the one that loaded.
                Ok(fd) => return Ok(fd),
                Err(again) => again,
            };
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            Err(io::Error::new(err.kind(), format!("{err}; verifier log: {}", text.trim())))
        }
    }
}

/// One `BPF_PROG_LOAD` of a device program, with the verifier's log written to `log` if given.
fn prog_load(program: &[BpfInsn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"bazaar_devs");
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, u32::try_from(buf.len()).unwrap_or(u32::MAX), buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(program.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    // SAFETY: attr and every buffer it points to (program, license, log) outlive the call; the
    // size passed is the size of the struct.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    // SAFETY: on success the kernel returned a new fd that nothing else owns.
    check(ret).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches a device program to a cgroup (directory fd), replacing the one attached before.
pub fn attach_device_program(cgroup: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
    };
    // SAFETY: attr is valid for the call and sized as passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    })?;
    Ok(())
}
