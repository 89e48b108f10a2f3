//! virtio devices: the [`VirtioDevice`] contract a device model implements, the interrupt it
//! raises, the virtio-mmio transport that exposes a device to the guest, and the device models
//! (vsock, fs through a vhost-user backend, net over a tap, block over a file, a balloon that
//! takes free page reports). Each device
//! model processes its queues on its own thread, woken through per-queue eventfds.

pub mod balloon;
pub mod block;
mod chain;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(test)]
mod test_utils;
mod used;
pub mod vsock;
mod worker;
mod worker_device;

pub use worker_device::WorkerDevice;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;

use crate::memory::GuestMemory;

/// `VIRTIO_F_VERSION_1`: the modern (non-legacy) interface, always offered by the transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// InterruptStatus bit: a used buffer was added to a queue.
pub const INTERRUPT_USED_RING: u32 = 0x1;
/// InterruptStatus bit: the device configuration changed.
pub const INTERRUPT_CONFIG: u32 = 0x2;

/// Something that delivers an interrupt to the guest (an irqfd eventfd, or a test double).
pub trait InterruptLine: Send + Sync {
    /// Raises the line (edge).
    fn raise(&self) -> std::io::Result<()>;
}

impl InterruptLine for vmm_sys_util::eventfd::EventFd {
    fn raise(&self) -> std::io::Result<()> {
        self.write(1)
    }
}

/// A device's handle on its interrupt: sets the transport's InterruptStatus, then raises the
/// line. Cloned into whatever thread processes the device's queues.
#[derive(Clone)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    line: Arc<dyn InterruptLine>,
}

impl VirtioInterrupt {
    /// An interrupt sharing `status` with a transport and raising `line`.
    pub fn new(status: Arc<AtomicU32>, line: Arc<dyn InterruptLine>) -> Self {
        Self { status, line }
    }

    /// Tells the driver that used buffers are ready.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.status.fetch_or(INTERRUPT_USED_RING, Ordering::SeqCst);
        self.line.raise()
    }

    /// Tells the driver that the device configuration changed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.status.fetch_or(INTERRUPT_CONFIG, Ordering::SeqCst);
        self.line.raise()
    }
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up the device in a way it cannot work with.
    #[error("bad device setup: {0}")]
    BadSetup(String),
    /// The device's host side failed (a socket, a file, a thread).
    #[error("device backend failed: {0}")]
    Backend(#[source] std::io::Error),
}

/// A virtio device model, independent of transport and VMM.
pub trait VirtioDevice: Send {
    /// The virtio device id (1 net, 2 block, 4 rng, 5 balloon, 19 vsock, 26 fs).
    fn device_type(&self) -> u32;
    /// The largest size of each of the device's queues; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device-specific feature bits offered (the transport adds [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of those offered), before activation.
    fn ack_features(&mut self, features: u64);
    /// Reads the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the driver's queues (index order, all valid).
    fn activate(
        &mut self,
        memory: GuestMemory,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `index` of new available buffers.
    fn queue_notify(&mut self, index: u16);
    /// The driver reset the device: drop queues and go back to the pre-activation state.
    fn reset(&mut self);
    /// Eventfds, by queue index, that a driver's notification of that queue may be written to
    /// directly (KVM ioeventfds, so the notification costs no exit to the VMM). Devices that
    /// return none get [`queue_notify`](Self::queue_notify) calls on the vCPU thread.
    fn queue_events(&self) -> &[vmm_sys_util::eventfd::EventFd] {
        &[]
    }
}

/// Serves a read of a device's read-only configuration space `config` at `offset`: the bytes
/// that exist, zeros past the end (a driver probing beyond the layout gets no garbage).
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(start) = usize::try_from(offset).ok().filter(|&start| start < config.len()) else {
        return;
    };
    let available = &config[start..];
    let count = available.len().min(data.len());
    data[..count].copy_from_slice(&available[..count]);
}
