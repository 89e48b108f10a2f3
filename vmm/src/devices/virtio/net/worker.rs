//! The "virtio-net" worker: moves frames between the tap and the two queues.
//!
//! - tx: each chain is one frame (virtio-net header included), written to the tap in one
//!   write, so the tap sees exactly the guest's frame boundaries.
//! - rx: when the tap is readable, one frame is read into a host buffer, then copied into the
//!   driver's rx buffers. When there are no buffers, that frame is kept and the tap is no
//!   longer watched, so the worker neither spins nor drops it; the driver posting buffers (an
//!   rx notification) delivers it and the tap is watched again.
//!
//! Everything works on any descriptor with datagram semantics (one read, one frame), which is
//! what the unit tests use in place of a tap.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::header::{fit_rx_header, VNET_HDR_LEN};
use super::rx::{Delivery, RxBuffers};
use super::{tap_offload, Counters, OffloadControl, MAX_FRAME_LEN, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::chain::Chain;
use crate::devices::virtio::worker::{Activation, Poller, QueueProcessor, BACKEND_TOKEN_BASE};
use crate::devices::virtio::{ActivateError, VirtioInterrupt};
use crate::memory::GuestMemory;

const TAP_TOKEN: u64 = BACKEND_TOKEN_BASE;
/// Frames read from the tap per wake-up: then the other events get a turn (the tap, watched
/// level-triggered, wakes the worker again).
const RX_BATCH: usize = 64;

/// Whether the worker listens to the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TapWatch {
    Watched,
    /// Not now: inactive, or a frame waits for rx buffers.
    Idle,
    /// Never again: the descriptor hung up or failed (a socket whose peer closed, in tests).
    Closed,
}

struct Active {
    memory: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: VirtioInterrupt,
    features: u64,
    rx_buffers: RxBuffers,
    /// Something was put on a used ring since the last interrupt.
    used_added: bool,
}

impl Active {
    fn interrupt_if_used(&mut self) {
        if std::mem::take(&mut self.used_added) {
            // An eventfd write; if it fails there is no other way to tell the guest.
            let _ = self.interrupt.signal_used_queue();
        }
    }
}

pub(super) struct NetProcessor {
    tap: File,
    set_offload: OffloadControl,
    counters: Arc<Counters>,
    watch: TapWatch,
    /// The host buffer a frame is read into (one byte more than the largest frame, to tell
    /// an oversized datagram from one that just fits).
    rx_frame: Vec<u8>,
    /// Length of a frame read from the tap and not yet in the guest.
    pending: Option<usize>,
    tx_frame: Vec<u8>,
    active: Option<Active>,
}

impl NetProcessor {
    pub fn new(tap: File, set_offload: OffloadControl, counters: Arc<Counters>) -> Self {
        Self {
            tap,
            set_offload,
            counters,
            watch: TapWatch::Idle,
            rx_frame: vec![0; MAX_FRAME_LEN + 1],
            pending: None,
            tx_frame: vec![0; MAX_FRAME_LEN],
            active: None,
        }
    }

    fn set_watch(&mut self, poller: &Poller, want: TapWatch) {
        if self.watch == want || self.watch == TapWatch::Closed {
            return;
        }
        let fd = self.tap.as_raw_fd();
        let result = match want {
            TapWatch::Watched => poller.watch(fd, TAP_TOKEN),
            TapWatch::Idle | TapWatch::Closed if self.watch == TapWatch::Watched => {
                poller.unwatch(fd)
            }
            _ => Ok(()),
        };
        // Epoll refuses only for lack of kernel memory: then the tap cannot be served.
        self.watch = if result.is_ok() { want } else { TapWatch::Closed };
    }

    /// Takes posted rx buffers, delivers the waiting frame if any, and watches the tap again
    /// once nothing waits.
    fn refill_rx(&mut self, poller: &Poller) {
        let Some(active) = self.active.as_mut() else { return };
        let taken = active.rx_buffers.take_available(&mut active.rx, &active.memory);
        self.counters.bad_chains.fetch_add(taken.bad as u64, Ordering::Relaxed);
        active.used_added |= taken.returned > 0;
        if self.pending.is_some() {
            deliver_pending(active, &mut self.rx_frame, &mut self.pending, &self.counters);
        }
        active.interrupt_if_used();
        if self.pending.is_none() {
            self.set_watch(poller, TapWatch::Watched);
        }
    }

    /// Reads frames from the tap into the guest until the tap is empty, the batch is done, or
    /// the guest has no buffers left (then the tap is left alone until it posts more).
    fn receive(&mut self, events: EventSet, poller: &Poller) {
        let Some(active) = self.active.as_mut() else { return };
        let mut stop_watching = None;
        for _ in 0..RX_BATCH {
            if self.pending.is_none() {
                match self.tap.read(&mut self.rx_frame) {
                    // End of file: the other end is gone (a socket in tests; a tap never).
                    Ok(0) if events.contains(EventSet::HANG_UP) => {
                        stop_watching = Some(TapWatch::Closed);
                        break;
                    }
                    Ok(0) => {
                        self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(len) => self.pending = Some(len),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        stop_watching = Some(TapWatch::Closed);
                        break;
                    }
                }
            }
            let delivery =
                deliver_pending(active, &mut self.rx_frame, &mut self.pending, &self.counters);
            if delivery == Delivery::NoRoom {
                stop_watching = Some(TapWatch::Idle);
                break;
            }
        }
        active.interrupt_if_used();
        if let Some(state) = stop_watching {
            self.set_watch(poller, state);
        }
    }

    /// Sends every frame on the tx queue (a queue's worth per call; more come on the next turn).
    fn transmit(&mut self, poller: &Poller) {
        let Some(active) = self.active.as_mut() else { return };
        let budget = usize::from(active.tx.size());
        for _ in 0..budget {
            let Some(chain) = active.tx.pop_descriptor_chain(&active.memory) else { break };
            let head = chain.head_index();
            match Chain::parse(&active.memory, chain) {
                Ok(chain) if is_tx_frame(&chain) => {
                    let frame = &mut self.tx_frame[..chain.readable.len()];
                    let sent = chain.readable.read_at(&active.memory, 0, frame).is_ok()
                        && write_frame(&mut self.tap, frame);
                    let counter =
                        if sent { &self.counters.tx_frames } else { &self.counters.tx_dropped };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.counters.bad_chains.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The device writes nothing into tx buffers.
            active.used_added |= active.tx.add_used(&active.memory, head, 0).is_ok();
        }
        if active
            .tx
            .avail_idx(&active.memory, Ordering::Acquire)
            .is_ok_and(|i| i.0 != active.tx.next_avail())
        {
            poller.renotify(usize::from(TX_QUEUE));
        }
        active.interrupt_if_used();
    }
}

/// A tx chain is device-readable only and holds a header and at most the largest frame.
fn is_tx_frame(chain: &Chain) -> bool {
    chain.writable.len() == 0 && (VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&chain.readable.len())
}

/// One write, one frame. A full tap queue (EAGAIN) or a refused frame drops it, as a NIC
/// would; the guest's TCP retransmits.
fn write_frame(tap: &mut File, frame: &[u8]) -> bool {
    loop {
        match tap.write(frame) {
            Ok(written) => return written == frame.len(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Offers the pending frame to the rx buffers; clears it unless it must wait for buffers.
fn deliver_pending(
    active: &mut Active,
    rx_frame: &mut [u8],
    pending: &mut Option<usize>,
    counters: &Counters,
) -> Delivery {
    let Some(len) = *pending else { return Delivery::Delivered };
    let mergeable = active.features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
    let frame = rx_frame.get_mut(..len).filter(|_| len <= MAX_FRAME_LEN);
    let delivery = match frame {
        Some(frame) => match fit_rx_header(frame, active.features) {
            Ok(()) => active.rx_buffers.deliver(frame, mergeable, &mut active.rx, &active.memory),
            Err(_) => Delivery::TooBig,
        },
        // Oversized: the read cut it.
        None => Delivery::TooBig,
    };
    match delivery {
        Delivery::NoRoom => return delivery,
        Delivery::Delivered => {
            counters.rx_frames.fetch_add(1, Ordering::Relaxed);
            active.used_added = true;
        }
        Delivery::TooBig | Delivery::Lost => {
            counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    *pending = None;
    delivery
}

impl QueueProcessor for NetProcessor {
    fn activate(&mut self, activation: Activation, poller: &Poller) -> Result<(), ActivateError> {
        let Activation { memory, queues, interrupt, features } = activation;
        let [rx, tx]: [Queue; 2] = queues.try_into().map_err(|q: Vec<Queue>| {
            ActivateError::BadSetup(format!("{} queues, expected 2", q.len()))
        })?;
        (self.set_offload)(self.tap.as_fd(), tap_offload(features))
            .map_err(ActivateError::Backend)?;
        self.active = Some(Active {
            memory,
            rx,
            tx,
            interrupt,
            features,
            rx_buffers: RxBuffers::default(),
            used_added: false,
        });
        // Buffers and frames the driver queued before DRIVER_OK are taken now.
        self.refill_rx(poller);
        self.transmit(poller);
        Ok(())
    }

    fn reset(&mut self, poller: &Poller) {
        self.active = None;
        // A frame read under the old features may not suit the next driver.
        self.pending = None;
        self.set_watch(poller, TapWatch::Idle);
    }

    fn queue_notified(&mut self, index: usize, poller: &Poller) {
        match u16::try_from(index) {
            Ok(RX_QUEUE) => self.refill_rx(poller),
            Ok(TX_QUEUE) => self.transmit(poller),
            _ => {}
        }
    }

    fn backend_ready(&mut self, token: u64, events: EventSet, poller: &Poller) {
        if token == TAP_TOKEN {
            self.receive(events, poller);
        }
    }
}
