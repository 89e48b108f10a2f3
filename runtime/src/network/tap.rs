//! Tap devices owned by their file descriptor. The device exists only while a descriptor for it
//! is open (it is not made persistent), so when the VMM and the runtime are gone, crashed or
//! not, the kernel removes the tap by itself: nothing for a cleanup pass to find.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

const TUN_DEVICE: &str = "/dev/net/tun";

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct TunIfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

// TUNSETIFF is _IOW('T', 202, int) although it takes a `struct ifreq *`.
nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    TunIfReq
);

/// Creates tap device `name` in the calling thread's network namespace and returns its
/// descriptor. `IFF_VNET_HDR` lets the VMM pass checksum and segmentation offloads through;
/// `IFF_NO_PI` leaves plain Ethernet frames.
pub fn open(name: &str) -> Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        bail!("invalid tap device name {name:?}");
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .with_context(|| format!("opening {TUN_DEVICE} (is the tun module loaded?)"))?;
    let mut request = TunIfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _union_rest: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: the descriptor is open and `request` is a complete, initialised ifreq that the
    // kernel only reads during the call.
    unsafe { tun_set_iff(file.as_raw_fd(), &request) }
        .with_context(|| format!("creating tap device {name} (TUNSETIFF)"))?;
    Ok(file.into())
}
