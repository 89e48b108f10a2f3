//! Receive buffers: the chains the driver posted on the rx queue, held until a frame fills
//! them. Holding them (rather than popping and pushing back) lets a frame wait for more
//! buffers without losing its place, and lets a bad chain go back to the driver at once.

use std::collections::VecDeque;

use virtio_queue::{Queue, QueueT};

use super::header::{set_num_buffers, VNET_HDR_LEN};
use crate::devices::virtio::chain::Chain;
use crate::devices::virtio::used;
use crate::memory::GuestMemory;

/// What became of a frame offered to the rx buffers.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// In the guest, on the used ring.
    Delivered,
    /// Not enough buffers yet: keep the frame and wait for the driver to post more.
    NoRoom,
    /// It cannot fit in any buffers the driver may post (one chain is too small without
    /// MRG_RXBUF; a full queue of them is too small with it): drop the frame.
    TooBig,
    /// The used ring could not be written: the frame and its buffers are lost.
    Lost,
}

/// The rx chains taken off the queue and not used yet, in the driver's order.
#[derive(Default)]
pub struct RxBuffers {
    chains: VecDeque<Chain>,
}

/// Counts from [`RxBuffers::take_available`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Chains refused (device-readable parts, no room for a header, outside guest memory).
    pub bad: usize,
    /// Of those, how many went back on the used ring (all but impossible head indices).
    pub returned: usize,
}

impl RxBuffers {
    /// Takes the chains the driver made available, up to a queue's worth held. A chain that
    /// cannot receive a frame goes straight back to the driver with nothing written.
    pub fn take_available(&mut self, queue: &mut Queue, memory: &GuestMemory) -> Taken {
        let limit = usize::from(queue.size());
        let mut taken = Taken::default();
        // Bounded by the queue size even if every chain is bad, so that a guest cannot keep
        // the worker here.
        for _ in 0..limit {
            if self.chains.len() >= limit {
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(memory) else { break };
            let head = chain.head_index();
            match Chain::parse(memory, chain) {
                Ok(chain) if chain.readable.len() == 0 && chain.writable.len() >= VNET_HDR_LEN => {
                    self.chains.push_back(chain);
                }
                _ => {
                    taken.bad += 1;
                    taken.returned += usize::from(queue.add_used(memory, head, 0).is_ok());
                }
            }
        }
        taken
    }

    /// Puts `frame` (virtio-net header first) into the held buffers: all into the first chain,
    /// or, when `mergeable` (MRG_RXBUF), over as many chains as it takes with `num_buffers`
    /// saying how many. The chains are published together.
    pub fn deliver(
        &mut self,
        frame: &mut [u8],
        mergeable: bool,
        queue: &mut Queue,
        memory: &GuestMemory,
    ) -> Delivery {
        let most_chains = if mergeable { usize::from(queue.size()) } else { 1 };
        let (mut needed, mut room) = (0usize, 0usize);
        for chain in self.chains.iter().take(most_chains) {
            if room >= frame.len() {
                break;
            }
            room += chain.writable.len();
            needed += 1;
        }
        if room < frame.len() {
            return if self.chains.len() >= most_chains {
                Delivery::TooBig
            } else {
                Delivery::NoRoom
            };
        }
        // `needed` is at most the queue size, a u16.
        set_num_buffers(frame, needed as u16);
        let mut entries = Vec::with_capacity(needed);
        let mut offset = 0;
        for chain in self.chains.drain(..needed) {
            let len = chain.writable.len().min(frame.len() - offset);
            // The buffers were checked against guest memory, which never changes under us:
            // this write cannot fail, and if it did the guest would read its own stale data.
            let _ = chain.writable.write_at(memory, 0, &frame[offset..offset + len]);
            entries.push((chain.head, len as u32));
            offset += len;
        }
        match used::publish(queue, memory, &entries) {
            Ok(()) => Delivery::Delivered,
            Err(_) => Delivery::Lost,
        }
    }
}
