//! Test support for device models: the test plays the guest driver, posting descriptor chains
//! in guest memory (virtio-queue's `MockSplitQueue` lays out the rings) and reading the used
//! ring back, while the device's worker thread serves the queue.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::{InterruptLine, VirtioInterrupt};
use crate::memory::GuestMemory;

/// How long a test waits for the device before failing.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// 16 MiB of guest RAM.
pub(crate) fn guest_memory() -> GuestMemory {
    crate::memory::create(16 << 20).expect("guest memory")
}

/// A buffer the driver posts: guest address, length, and whether the device writes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A device-readable buffer.
pub(crate) fn readable(addr: u64, len: u32) -> Buf {
    Buf { addr, len, writable: false }
}

/// A device-writable buffer.
pub(crate) fn writable(addr: u64, len: u32) -> Buf {
    Buf { addr, len, writable: true }
}

/// The driver's side of one split queue.
///
/// The mock lays out the descriptor table and the available ring. Its used ring is not used:
/// virtio-queue 0.18's mock puts it `size` bytes after the start of the available ring's
/// entries (`SplitQueueRing::end` counts entries, not bytes), on top of the ring's upper
/// half, so posting more than about `size / 2` chains overwrote the used index. The used ring
/// lives on its own page instead, at [`DriverQueue::used_ring`].
pub(crate) struct DriverQueue<'a> {
    memory: &'a GuestMemory,
    mock: MockSplitQueue<'a, GuestMemory>,
    size: u16,
    used_ring: u64,
    next_descriptor: u16,
    avail_idx: u16,
}

impl<'a> DriverQueue<'a> {
    /// A queue of `size` entries with its rings from `base` on (up to `base + 0x3000` for 256
    /// entries).
    pub fn new(memory: &'a GuestMemory, base: u64, size: u16) -> Self {
        let mock = MockSplitQueue::create(memory, GuestAddress(base), size);
        let size64 = u64::from(size);
        let rings_end = base + 16 * size64 + 6 + 2 * size64;
        let used_ring = (rings_end + 0xfff) & !0xfff;
        memory
            .write_slice(&vec![0u8; 6 + 8 * usize::from(size)], GuestAddress(used_ring))
            .expect("used ring");
        Self { memory, mock, size, used_ring, next_descriptor: 0, avail_idx: 0 }
    }

    /// The device's view of the queue, as the transport would hand it over.
    pub fn device_queue(&self) -> Queue {
        let mut queue = self.mock.create_queue::<Queue>().expect("queue");
        queue.set_used_ring_address(
            Some(self.used_ring as u32),
            Some((self.used_ring >> 32) as u32),
        );
        queue
    }

    /// Writes `buffers` as one chain into fresh descriptors and makes it available; returns
    /// the head index.
    pub fn post(&mut self, buffers: &[Buf]) -> u16 {
        let indices: Vec<u16> =
            (0..buffers.len()).map(|i| (self.next_descriptor + i as u16) % self.size).collect();
        self.next_descriptor = (self.next_descriptor + buffers.len() as u16) % self.size;
        for (i, buf) in buffers.iter().enumerate() {
            let last = i + 1 == buffers.len();
            let mut flags = if last { 0 } else { VRING_DESC_F_NEXT as u16 };
            if buf.writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = if last { 0 } else { indices[i + 1] };
            let descriptor = Descriptor::new(buf.addr, buf.len, flags, next);
            self.mock
                .desc_table()
                .store(indices[i], RawDescriptor::from(descriptor))
                .expect("store");
        }
        self.post_head(indices[0]);
        indices[0]
    }

    /// Makes `head` available as is (tests of bad head indices use it directly).
    pub fn post_head(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        self.mock.avail().ring().ref_at(slot).expect("avail slot").store(head.to_le());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mock.avail().idx().store(self.avail_idx.to_le());
    }

    /// How many entries the device has put on the used ring.
    pub fn used_count(&self) -> u16 {
        let idx = self.memory.read_obj::<u16>(GuestAddress(self.used_ring + 2)).expect("used idx");
        u16::from_le(idx)
    }

    /// Used entry number `i` (head, length written); valid for the last `size` entries.
    pub fn used_at(&self, i: u16) -> (u16, u32) {
        let element = self.used_ring + 4 + 8 * u64::from(i % self.size);
        let read_u32 = |addr: u64| {
            u32::from_le(self.memory.read_obj::<u32>(GuestAddress(addr)).expect("used ring"))
        };
        (read_u32(element) as u16, read_u32(element + 4))
    }

    /// The used ring so far, for tests that post fewer than `size` chains in all.
    pub fn used(&self) -> Vec<(u16, u32)> {
        (0..self.used_count()).map(|i| self.used_at(i)).collect()
    }

    /// Waits until the used ring has `count` entries, and returns them.
    pub fn wait_used(&self, count: usize) -> Vec<(u16, u32)> {
        wait_for(&format!("{count} used entries"), || self.used().len() >= count);
        self.used()
    }
}

/// Polls `condition` until it holds, failing the test after [`TIMEOUT`].
pub(crate) fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An interrupt line that counts how often it was raised.
#[derive(Default)]
pub(crate) struct CountingLine(AtomicU32);

impl CountingLine {
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

impl InterruptLine for CountingLine {
    fn raise(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// An interrupt whose raises the returned line counts.
pub(crate) fn counting_interrupt() -> (VirtioInterrupt, Arc<CountingLine>) {
    let line = Arc::new(CountingLine::default());
    (VirtioInterrupt::new(Arc::new(AtomicU32::new(0)), line.clone()), line)
}
