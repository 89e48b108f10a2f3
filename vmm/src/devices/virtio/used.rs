//! Returning several chains to the driver at once.
//!
//! virtio-queue's `add_used` publishes each entry (moves the used index) as it goes. A received
//! frame spread over several buffers (virtio-net's MRG_RXBUF) must appear all at once: the
//! driver reads `num_buffers` from the first buffer and then expects that many used entries,
//! and Linux drops the frame if the rest are not there yet. So the entries are written first
//! and the index is moved once, with release ordering, as `add_used` does for one.
//!
//! This leaves virtio-queue's count of added entries (kept for VIRTIO_RING_F_EVENT_IDX) behind;
//! the transport does not offer EVENT_IDX, so every completion interrupts.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// Why the used ring could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UsedError {
    /// A head index the queue cannot have handed out.
    #[error("head index {0} is outside the queue")]
    BadHead(u16),
    /// The used ring is not in guest memory.
    #[error("writing the used ring failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Puts `entries` (head index, bytes written) on the used ring in order and publishes them
/// together. On error nothing is published.
pub(crate) fn publish(
    queue: &mut Queue,
    memory: &GuestMemory,
    entries: &[(u16, u32)],
) -> Result<(), UsedError> {
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let mut next = queue.next_used();
    for &(head, len) in entries {
        if head >= size {
            return Err(UsedError::BadHead(head));
        }
        // struct virtq_used_elem { le32 id; le32 len; } after the 4-byte flags + idx header.
        let slot = ring.0 + 4 + u64::from(next % size) * 8;
        let mut element = [0u8; 8];
        element[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        element[4..].copy_from_slice(&len.to_le_bytes());
        memory.write_slice(&element, GuestAddress(slot))?;
        next = next.wrapping_add(1);
    }
    memory.store(next.to_le(), GuestAddress(ring.0 + 2), Ordering::Release)?;
    queue.set_next_used(next);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, DriverQueue};

    #[test]
    fn entries_appear_together_in_order() {
        let memory = guest_memory();
        let driver = DriverQueue::new(&memory, 0x1000, 4);
        let mut queue = driver.device_queue();
        publish(&mut queue, &memory, &[(1, 10)]).expect("publish");
        publish(&mut queue, &memory, &[(3, 30), (0, 0), (2, 20)]).expect("publish");
        assert_eq!(driver.used(), vec![(1, 10), (3, 30), (0, 0), (2, 20)]);
        assert_eq!(queue.next_used(), 4);
    }

    #[test]
    fn a_bad_head_publishes_nothing() {
        let memory = guest_memory();
        let driver = DriverQueue::new(&memory, 0x1000, 4);
        let mut queue = driver.device_queue();
        assert!(matches!(
            publish(&mut queue, &memory, &[(1, 10), (4, 0)]),
            Err(UsedError::BadHead(4))
        ));
        assert!(driver.used().is_empty());
        assert_eq!(queue.next_used(), 0);
    }
}
