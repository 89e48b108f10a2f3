//! virtio-balloon (device type 5), for free page reporting only: the guest hands blocks of its
//! free memory to the device on the reporting queue, and the device gives the host memory
//! behind them back ([`crate::memory::discard`]). A guest touches much of its RAM once (the
//! initrd image, its unpacking, init code, boot-time allocations) and frees it again; without
//! reporting, the host keeps all of it backed for the life of the VM.
//!
//! Offered: `VIRTIO_BALLOON_F_REPORTING`. Not offered: inflating the balloon (`num_pages`
//! stays 0, so the VMM never asks the guest for memory), statistics, free page hinting, page
//! poisoning (the guest must not expect reported pages to keep a pattern: they read as zeros).
//!
//! Queues, in the order the spec lays them out when only `REPORTING` is negotiated: inflate,
//! deflate, reporting. The driver puts nothing on the first two while `num_pages` is 0; a
//! chain that arrives there anyway is returned untouched.
//!
//! A reporting chain is device-writable buffers, each one free guest range of whole pages
//! (aligned to the guest's reporting order); the device writes nothing into them and returns
//! the chain with used length 0 once the ranges are discarded.

use virtio_queue::{Queue, QueueT};

use super::chain::Chain;
use super::worker::{Activation, Poller, QueueProcessor, Worker};
use super::worker_device::{Identity, WorkerDevice};
use super::{ActivateError, VirtioInterrupt};
use crate::memory::{self, GuestMemory};

/// The virtio device id of a memory balloon.
pub const DEVICE_TYPE: u32 = 5;
/// Feature bit: the driver reports free pages on the reporting queue.
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;
/// Entries of each queue. Linux's driver needs at least 32 on the reporting queue (it reports
/// up to 32 ranges in one chain) and refuses the feature otherwise.
pub const QUEUE_SIZE: u16 = 32;
/// Index of the reporting queue.
pub const REPORTING_QUEUE: usize = 2;

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE; 3];
/// num_pages (u32) and actual (u32), both 0: the other fields exist only with features not
/// offered here.
const CONFIG_LEN: usize = 8;

/// Why the balloon could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The worker thread or its eventfds could not be created.
    #[error("cannot start the virtio-balloon worker: {0}")]
    Worker(#[source] std::io::Error),
}

/// A virtio-balloon device that only takes free page reports.
pub type Balloon = WorkerDevice<()>;

impl Balloon {
    /// The device, with its worker thread started.
    pub fn new() -> Result<Balloon, Error> {
        let worker = Worker::spawn("virtio-balloon", QUEUE_SIZES.len(), ReportProcessor::default())
            .map_err(Error::Worker)?;
        let identity = Identity {
            device_type: DEVICE_TYPE,
            queue_sizes: QUEUE_SIZES,
            features: 1 << VIRTIO_BALLOON_F_REPORTING,
        };
        Ok(WorkerDevice::from_parts(identity, vec![0u8; CONFIG_LEN], worker, ()))
    }
}

struct Active {
    memory: GuestMemory,
    queues: Vec<Queue>,
    interrupt: VirtioInterrupt,
}

#[derive(Default)]
struct ReportProcessor {
    active: Option<Active>,
    /// Whether a failed discard was already logged (one line, not one per report).
    logged_failure: bool,
}

impl ReportProcessor {
    /// Serves at most one queue's worth of chains of queue `index`; asks to be woken again if
    /// more are left.
    fn process_queue(&mut self, index: usize, poller: &Poller) {
        let Some(active) = self.active.as_mut() else { return };
        let Some(queue) = active.queues.get_mut(index) else { return };
        let budget = usize::from(queue.size());
        let mut added = false;
        for _ in 0..budget {
            let Some(chain) = queue.pop_descriptor_chain(&active.memory) else { break };
            let head = chain.head_index();
            if index == REPORTING_QUEUE {
                match Chain::parse(&active.memory, chain) {
                    Ok(chain) => discard_reported(&active.memory, &chain, &mut self.logged_failure),
                    Err(e) => log_once(&mut self.logged_failure, &e.to_string()),
                }
            }
            // Fails only for a head index outside the queue: nothing can be returned then.
            added |= queue.add_used(&active.memory, head, 0).is_ok();
        }
        let more = queue
            .avail_idx(&active.memory, std::sync::atomic::Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != queue.next_avail());
        if more {
            poller.renotify(index);
        }
        if added {
            // The interrupt is an eventfd write; if it fails the guest cannot be told anyway.
            let _ = active.interrupt.signal_used_queue();
        }
    }
}

/// Discards every range of a reporting chain. A range that cannot be discarded keeps its host
/// memory; the guest is not told (the report has no status), and nothing else goes wrong.
fn discard_reported(memory: &GuestMemory, chain: &Chain, logged_failure: &mut bool) {
    let Ok(ranges) = chain.writable.pieces(0, chain.writable.len()) else { return };
    for range in ranges {
        if let Err(e) = memory::discard(memory, range.addr, range.len) {
            log_once(logged_failure, &e.to_string());
        }
    }
}

fn log_once(logged: &mut bool, what: &str) {
    if !*logged {
        *logged = true;
        eprintln!("bazaar-vmm: virtio-balloon: a free page report was not discarded: {what}");
    }
}

impl QueueProcessor for ReportProcessor {
    fn activate(&mut self, activation: Activation, poller: &Poller) -> Result<(), ActivateError> {
        let Activation { memory, queues, interrupt, .. } = activation;
        if queues.len() != QUEUE_SIZES.len() {
            let message = format!("{} queues, expected {}", queues.len(), QUEUE_SIZES.len());
            return Err(ActivateError::BadSetup(message));
        }
        self.active = Some(Active { memory, queues, interrupt });
        // Chains made available before DRIVER_OK are served now.
        for index in 0..QUEUE_SIZES.len() {
            self.process_queue(index, poller);
        }
        Ok(())
    }

    fn reset(&mut self, _poller: &Poller) {
        self.active = None;
    }

    fn queue_notified(&mut self, index: usize, poller: &Poller) {
        self.process_queue(index, poller);
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_utils::{
        counting_interrupt, guest_memory, readable, writable, DriverQueue,
    };
    use crate::devices::virtio::VirtioDevice;
    use crate::memory::backed_bytes;

    /// The device activated with its three queues (rings at 0x1000, 0x5000, 0x9000).
    fn start(memory: &GuestMemory) -> (Balloon, Vec<DriverQueue<'_>>) {
        let mut device = Balloon::new().expect("balloon");
        assert_eq!(device.device_type(), DEVICE_TYPE);
        assert_eq!(device.features(), 1 << VIRTIO_BALLOON_F_REPORTING);
        let mut config = [0xffu8; CONFIG_LEN];
        device.read_config(0, &mut config);
        assert_eq!(config, [0u8; CONFIG_LEN], "num_pages 0: the balloon is never inflated");
        let drivers: Vec<DriverQueue> = [0x1000, 0x5000, 0x9000]
            .into_iter()
            .map(|base| DriverQueue::new(memory, base, QUEUE_SIZE))
            .collect();
        let (interrupt, _line) = counting_interrupt();
        device.ack_features(device.features());
        let queues = drivers.iter().map(DriverQueue::device_queue).collect();
        device.activate(memory.clone(), queues, interrupt).expect("activate");
        (device, drivers)
    }

    #[test]
    fn reported_ranges_go_back_to_the_host() {
        let memory = guest_memory();
        let (mut device, mut drivers) = start(&memory);
        let before = backed_bytes(&memory);
        // The guest touches 64 KiB + 8 KiB, then reports the 64 KiB block and one 4 KiB page.
        memory.write_slice(&[0x5a; 0x12000], GuestAddress(0x40_0000)).expect("touch");
        assert_eq!(backed_bytes(&memory), before + 0x12000);
        let head = drivers[REPORTING_QUEUE]
            .post(&[writable(0x40_0000, 0x10000), writable(0x41_0000, 0x1000)]);
        device.queue_notify(REPORTING_QUEUE as u16);
        assert_eq!(drivers[REPORTING_QUEUE].wait_used(1), vec![(head, 0)]);
        assert_eq!(backed_bytes(&memory), before + 0x1000, "one touched page is left");
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x40_8000)).expect("read"), 0);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x41_1000)).expect("read"), 0x5a);
    }

    #[test]
    fn bad_reports_are_returned_and_keep_their_memory() {
        let memory = guest_memory();
        let (mut device, mut drivers) = start(&memory);
        memory.write_slice(&[0x5a; 0x2000], GuestAddress(0x40_0000)).expect("touch");
        let before = backed_bytes(&memory);
        let reporting = &mut drivers[REPORTING_QUEUE];
        // Not whole pages; then a device-readable buffer (the chain parser's order holds).
        let first = reporting.post(&[writable(0x40_0800, 0x1000)]);
        let second = reporting.post(&[readable(0x40_0000, 0x1000)]);
        device.queue_notify(REPORTING_QUEUE as u16);
        assert_eq!(reporting.wait_used(2), vec![(first, 0), (second, 0)]);
        assert_eq!(backed_bytes(&memory), before, "nothing was discarded");
    }

    #[test]
    fn inflate_and_deflate_chains_are_returned_untouched() {
        let memory = guest_memory();
        let (mut device, mut drivers) = start(&memory);
        // An inflate entry naming its own page (pfn 0x400 is 0x40_0000): honoured, it would
        // free that page.
        memory.write_obj(0x400u32, GuestAddress(0x40_0000)).expect("a pfn");
        let before = backed_bytes(&memory);
        for index in [0usize, 1] {
            let head = drivers[index].post(&[readable(0x40_0000, 4)]);
            device.queue_notify(index as u16);
            assert_eq!(drivers[index].wait_used(1), vec![(head, 0)]);
        }
        assert_eq!(backed_bytes(&memory), before);
    }
}
