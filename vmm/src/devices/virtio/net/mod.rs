//! virtio-net (device type 1) over a tap: queue 0 receives, queue 1 transmits, no control
//! queue. The queues are served by the "virtio-net" worker thread (see `worker`).
//!
//! Features offered, and why each can be honoured:
//! - `MAC`: the configuration space carries the MAC the runtime chose for the pod;
//! - `STATUS`: the link is reported up (a tap carries no link state to pass on);
//! - `CSUM`, `HOST_TSO4`, `HOST_TSO6`: the guest may send frames with a partial checksum and
//!   TCP segments up to 64 KiB; the tap takes the virtio-net header as is (it always accepts
//!   these from user space) and the host stack finishes checksums and segments as needed;
//! - `GUEST_CSUM`, `GUEST_TSO4`, `GUEST_TSO6`: once the driver accepts them, TUNSETOFFLOAD lets
//!   the tap hand us partial checksums and large TCP segments (TUN_F_CSUM, TUN_F_TSO4/6), and
//!   their header passes through to the guest. Frames the driver did not accept are dropped
//!   (see `header`), so a reset that renegotiates less is safe;
//! - `MRG_RXBUF`: the guest can post small (page-size) rx buffers and a large frame spreads
//!   over several, `num_buffers` saying how many.
//!
//! Not offered: ECN and UFO/USO offloads (never enabled on the tap), the control queue (and
//! so MAC filtering, VLAN filtering, announce), multiqueue, MTU.

mod header;
mod rx;
mod tap;
#[cfg(test)]
mod tests;
mod worker;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::worker::Worker;
use super::worker_device::{Identity, WorkerDevice};
use header::VNET_HDR_LEN;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use worker::NetProcessor;

/// The virtio device id of a network card.
pub const DEVICE_TYPE: u32 = 1;
/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;
/// The largest frame either way, virtio-net header included: a 64 KiB TCP segment with its
/// Ethernet and VLAN headers. The spec asks this much of non-mergeable rx buffers under TSO.
pub const MAX_FRAME_LEN: usize = 65562;

/// mac (6 bytes), status (u16).
const CONFIG_LEN: usize = 8;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE, QUEUE_SIZE];

const OFFERED_FEATURES: u64 = 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_MRG_RXBUF;

/// Sets the tap's offloads (TUN_F_* bits) on activation; the real one is TUNSETOFFLOAD, tests
/// record the flags instead (their stand-in for a tap is a socket).
pub(crate) type OffloadControl = Box<dyn FnMut(BorrowedFd<'_>, u32) -> io::Result<()> + Send>;

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TUNSETVNETHDRSZ failed (not a tap, or one without IFF_VNET_HDR).
    #[error("cannot set the tap's vnet header size: {0}")]
    VnetHeaderSize(#[source] io::Error),
    /// The descriptor could not be made non-blocking.
    #[error("cannot make the tap non-blocking: {0}")]
    NonBlocking(#[source] io::Error),
    /// The worker thread or its eventfds could not be created.
    #[error("cannot start the virtio-net worker: {0}")]
    Worker(#[source] io::Error),
}

/// Frame counters, for metrics and for telling a misbehaving guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames put into the guest.
    pub rx_frames: u64,
    /// Frames from the tap that no guest buffer could take (too big, wrong offloads, empty).
    pub rx_dropped: u64,
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Frames the tap refused or had no room for.
    pub tx_dropped: u64,
    /// Descriptor chains refused as malformed (returned to the guest unused).
    pub bad_chains: u64,
}

#[derive(Default)]
struct Counters {
    rx_frames: AtomicU64,
    rx_dropped: AtomicU64,
    tx_frames: AtomicU64,
    tx_dropped: AtomicU64,
    bad_chains: AtomicU64,
}

/// A virtio-net device backed by a tap descriptor.
pub type Net = WorkerDevice<NetInfo>;

/// What a net device tells about itself.
pub struct NetInfo {
    mac: [u8; 6],
    counters: Arc<Counters>,
}

impl Net {
    /// A network card with address `mac` on `tap`, a tap opened with IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR. Sets the tap's vnet header size to 12 (the virtio 1.x header).
    pub fn new(tap: OwnedFd, mac: [u8; 6]) -> Result<Net, Error> {
        tap::set_vnet_hdr_size(tap.as_fd(), VNET_HDR_LEN as libc::c_int)
            .map_err(Error::VnetHeaderSize)?;
        Self::with_offload_control(tap, mac, Box::new(tap::set_offload))
    }

    /// A network card on any descriptor with datagram semantics, whose offloads are set by
    /// `set_offload` at activation.
    pub(crate) fn with_offload_control(
        io: OwnedFd,
        mac: [u8; 6],
        set_offload: OffloadControl,
    ) -> Result<Net, Error> {
        tap::set_nonblocking(io.as_fd()).map_err(Error::NonBlocking)?;
        let mut config = vec![0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        let counters = Arc::new(Counters::default());
        let processor = NetProcessor::new(File::from(io), set_offload, counters.clone());
        let worker =
            Worker::spawn("virtio-net", QUEUE_SIZES.len(), processor).map_err(Error::Worker)?;
        let identity = Identity {
            device_type: DEVICE_TYPE,
            queue_sizes: QUEUE_SIZES,
            features: OFFERED_FEATURES,
        };
        Ok(WorkerDevice::from_parts(identity, config, worker, NetInfo { mac, counters }))
    }

    /// The card's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.state().mac
    }

    /// The frame counters so far.
    pub fn stats(&self) -> NetStats {
        let counters = &self.state().counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        NetStats {
            rx_frames: load(&counters.rx_frames),
            rx_dropped: load(&counters.rx_dropped),
            tx_frames: load(&counters.tx_frames),
            tx_dropped: load(&counters.tx_dropped),
            bad_chains: load(&counters.bad_chains),
        }
    }
}

/// The TUN_F_* offloads that match the features the driver accepted: what the guest can
/// receive. TSO needs the checksum offload too (the tap ignores it otherwise, and the spec has
/// GUEST_TSO depend on GUEST_CSUM).
fn tap_offload(features: u64) -> u32 {
    let accepted = |bit: u32| features & (1 << bit) != 0;
    if !accepted(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if accepted(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if accepted(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}
