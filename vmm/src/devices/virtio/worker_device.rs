//! The vCPU-thread half of a device whose queues a [`Worker`] serves: identity, feature
//! negotiation and a read-only configuration space here, everything else forwarded to the
//! worker. Net and block are this with their own extra state (`Net`, `Block` are aliases).

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{Activation, Worker};
use super::{read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::memory::GuestMemory;

/// What the transport asks of a device before it runs.
pub(crate) struct Identity {
    /// The virtio device id.
    pub device_type: u32,
    /// The largest size of each queue (their count is the number of queues).
    pub queue_sizes: &'static [u16],
    /// Device-specific features offered.
    pub features: u64,
}

/// A device served by a worker thread, with `S` the state only that kind of device has.
pub struct WorkerDevice<S> {
    identity: Identity,
    acked_features: u64,
    config: Vec<u8>,
    worker: Worker,
    state: S,
}

impl<S> WorkerDevice<S> {
    pub(crate) fn from_parts(
        identity: Identity,
        config: Vec<u8>,
        worker: Worker,
        state: S,
    ) -> Self {
        Self { identity, acked_features: 0, config, worker, state }
    }

    pub(crate) fn state(&self) -> &S {
        &self.state
    }
}

impl<S: Send> VirtioDevice for WorkerDevice<S> {
    /// The queues' notification eventfds, in queue order (registered as KVM ioeventfds).
    fn queue_events(&self) -> &[EventFd] {
        self.worker.queue_events()
    }

    fn device_type(&self) -> u32 {
        self.identity.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.identity.queue_sizes
    }

    fn features(&self) -> u64 {
        self.identity.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    /// Nothing offered makes the configuration writable (a net card's MAC changes through the
    /// control queue in virtio 1.x; a disk's writeback toggle is not offered): writes are
    /// ignored.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        memory: GuestMemory,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let expected = self.identity.queue_sizes.len();
        if queues.len() != expected {
            let message = format!("{} queues, expected {expected}", queues.len());
            return Err(ActivateError::BadSetup(message));
        }
        let features = self.acked_features;
        self.worker.activate(Activation { memory, queues, interrupt, features })
    }

    /// Runs on the vCPU thread: only an eventfd write, the worker does the rest.
    fn queue_notify(&mut self, index: u16) {
        self.worker.notify(index);
    }

    /// Returns once the worker has dropped the queues.
    fn reset(&mut self) {
        self.worker.reset();
        self.acked_features = 0;
    }
}
