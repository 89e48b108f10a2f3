//! The system calls the net device makes on its tap descriptor beyond read and write: the
//! vnet header size, the offloads, non-blocking mode. All of the device's unsafe code is here.
//! The tap itself is created by the runtime (`runtime/src/network/tap.rs`) with IFF_TAP |
//! IFF_NO_PI | IFF_VNET_HDR and handed to the VMM as a descriptor.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};

/// Sets how many bytes of virtio-net header precede each frame read from or written to the tap
/// (TUNSETVNETHDRSZ).
pub fn set_vnet_hdr_size(tap: BorrowedFd<'_>, size: libc::c_int) -> io::Result<()> {
    // SAFETY: `tap` is an open descriptor; TUNSETVNETHDRSZ reads one int through the pointer,
    // which points to `size` for the whole call.
    let ret = unsafe { ioctl_with_ref(&tap, libc::TUNSETVNETHDRSZ as _, &size) };
    check(ret)
}

/// Tells the tap which offloads it may hand us in the header (TUNSETOFFLOAD, TUN_F_* bits):
/// partial checksums (TUN_F_CSUM) and TCP segments up to 64 KiB (TUN_F_TSO4/6).
pub fn set_offload(tap: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: `tap` is an open descriptor; TUNSETOFFLOAD takes its argument by value and
    // touches no memory of ours.
    let ret = unsafe { ioctl_with_val(&tap, libc::TUNSETOFFLOAD as _, libc::c_ulong::from(flags)) };
    check(ret)
}

/// Puts `fd` in non-blocking mode (shared by every descriptor of the open file, which the
/// device owns alone): reads end with EAGAIN when the tap is empty, and the worker never
/// blocks where a reset or stop request could not reach it.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL on an open descriptor reads its flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    check(flags)?;
    // SAFETY: F_SETFL on an open descriptor sets its flags and touches no memory.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    check(ret)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Test support: a real tap to run the ioctls against.
#[cfg(test)]
pub mod test_tap {
    use std::fs::OpenOptions;
    use std::io;
    use std::os::fd::{BorrowedFd, OwnedFd};

    use vmm_sys_util::ioctl::ioctl_with_mut_ref;

    pub const TUN_DEVICE: &str = "/dev/net/tun";

    /// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
    #[repr(C)]
    struct TunIfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _union_rest: [u8; 22],
    }

    /// Opens a tap named by the kernel ("tapN"), as the runtime does (IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR). It is not persistent: it disappears when the descriptor is closed.
    pub fn open() -> io::Result<OwnedFd> {
        let file = OpenOptions::new().read(true).write(true).open(TUN_DEVICE)?;
        let mut request = TunIfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _union_rest: [0; 22],
        };
        // SAFETY: the descriptor is open and `request` is a complete ifreq that the kernel
        // reads, and writes the chosen name into, during the call only.
        let ret = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as _, &mut request) };
        super::check(ret)?;
        Ok(file.into())
    }

    /// The tap's vnet header size (TUNGETVNETHDRSZ).
    pub fn vnet_hdr_size(tap: BorrowedFd<'_>) -> io::Result<libc::c_int> {
        let mut size: libc::c_int = 0;
        // SAFETY: `tap` is open; TUNGETVNETHDRSZ writes one int to `size`, alive for the call.
        let ret = unsafe { ioctl_with_mut_ref(&tap, libc::TUNGETVNETHDRSZ as _, &mut size) };
        super::check(ret)?;
        Ok(size)
    }
}
