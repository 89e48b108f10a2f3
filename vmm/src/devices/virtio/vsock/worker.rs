//! The device's one thread. It exists from device creation (so that the thread that later
//! gets a seccomp filter is this one, and vCPU threads never need to clone), sits idle until
//! activation hands it guest memory, queues and the interrupt, then waits on one epoll set for
//! queue notifications, host sockets, timeouts and commands, and moves packets between the
//! queues and the [`Muxer`].

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, FIRST_SOCKET_TOKEN};
use super::packet::{self, RxBuffer};
use super::{DropCounter, NUM_QUEUES};
use crate::devices::virtio::VirtioInterrupt;
use crate::memory::GuestMemory;

const CONTROL_TOKEN: u64 = 0;
/// Queue `i`'s notification eventfd has token `QUEUE_TOKEN + i`.
const QUEUE_TOKEN: u64 = 1;
const LISTENER_TOKEN: u64 = 8;
const _: () = assert!(QUEUE_TOKEN + (NUM_QUEUES as u64) <= LISTENER_TOKEN);
const _: () = assert!(LISTENER_TOKEN < FIRST_SOCKET_TOKEN);

/// Descriptor chains handled per queue before the worker looks at its sockets and commands
/// again, so a guest that keeps its queues full cannot keep the worker from them.
const CHAINS_PER_PASS: usize = 256;
/// Passes over both queues per wakeup (tx can create rx work and rx can unblock tx).
const PASSES_PER_WAKEUP: usize = 4;

/// What the driver handed over at activation.
pub struct Activation {
    pub memory: GuestMemory,
    /// rx, tx, event (in that order): checked to be [`NUM_QUEUES`] long before being sent.
    pub queues: Vec<Queue>,
    pub interrupt: VirtioInterrupt,
}

/// Requests from the device (on the vCPU or VMM thread) to its worker.
/// Activation and reset are acknowledged, so that what follows them on the caller's side (a
/// host client connecting, the driver reusing its rings) finds the worker in the new state.
pub enum Command {
    Activate(Box<Activation>, Sender<()>),
    /// Drop queues and connections.
    Reset(Sender<()>),
    Stop,
}

pub struct Worker {
    epoll: Epoll,
    control: EventFd,
    commands: Receiver<Command>,
    queue_events: Vec<EventFd>,
    muxer: Muxer,
    active: Option<Activation>,
    dropped: Arc<DropCounter>,
    /// A pass stopped early: poll again without sleeping.
    more_work: bool,
}

/// How much one pass over a queue did.
#[derive(Default)]
struct Pass {
    chains: usize,
}

impl Pass {
    fn hit_limit(&self) -> bool {
        self.chains >= CHAINS_PER_PASS
    }
}

impl Worker {
    /// Sets up the epoll set (in the caller's thread, so that failures reach the caller).
    pub fn new(
        control: EventFd,
        commands: Receiver<Command>,
        queue_events: Vec<EventFd>,
        muxer: Muxer,
        dropped: Arc<DropCounter>,
    ) -> io::Result<Worker> {
        let epoll = Epoll::new()?;
        let add =
            |fd, token| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token));
        add(control.as_raw_fd(), CONTROL_TOKEN)?;
        for (index, event) in queue_events.iter().enumerate() {
            add(event.as_raw_fd(), QUEUE_TOKEN + index as u64)?;
        }
        add(muxer.listener().as_raw_fd(), LISTENER_TOKEN)?;
        Ok(Worker {
            epoll,
            control,
            commands,
            queue_events,
            muxer,
            active: None,
            dropped,
            more_work: false,
        })
    }

    /// Serves until told to stop.
    pub fn run(mut self) {
        if let Err(err) = crate::seccomp::apply_device_filter() {
            // Unconfined it must not serve a guest; activation then times out and the driver
            // sees a device that needs a reset.
            eprintln!("bazaar-vmm: virtio-vsock: worker stops: {err}");
            return;
        }
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let count = match self.epoll.wait(self.wait_timeout_ms(), &mut events) {
                Ok(count) => count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    eprintln!("bazaar-vmm: virtio-vsock: epoll_wait failed, device stops: {err}");
                    return;
                }
            };
            // Commands first, whatever woke us: a client that connects right after
            // `activate` returned must find the device active, even when its readiness is
            // reported before the control eventfd's.
            if !self.handle_commands() {
                return;
            }
            for event in &events[..count] {
                match event.data() {
                    CONTROL_TOKEN => {}
                    LISTENER_TOKEN => self.muxer.accept(),
                    token if token >= FIRST_SOCKET_TOKEN => {
                        self.muxer.on_socket_event(token, event.event_set())
                    }
                    token => {
                        // A queue notification: clearing it is enough, every wakeup looks at
                        // all queues.
                        let index = (token - QUEUE_TOKEN) as usize;
                        if let Some(event) = self.queue_events.get(index) {
                            let _ = event.read();
                        }
                    }
                }
            }
            self.muxer.expire(Instant::now());
            self.process_queues();
            self.muxer.sync_interests(&self.epoll);
        }
    }

    fn wait_timeout_ms(&self) -> i32 {
        if self.more_work {
            return 0;
        }
        match self.muxer.next_deadline() {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up, so the wakeup is never before the deadline.
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        }
    }

    /// Runs pending commands; false once told to stop (or orphaned).
    fn handle_commands(&mut self) -> bool {
        // Clears the wakeup; it is EAGAIN (ignored) when the control eventfd was not written.
        let _ = self.control.read();
        loop {
            match self.commands.try_recv() {
                Ok(Command::Activate(activation, ack)) => {
                    self.active = Some(*activation);
                    self.muxer.set_active(true);
                    // The driver may have queued buffers before its notifications were seen.
                    self.more_work = true;
                    let _ = ack.send(());
                }
                Ok(Command::Reset(ack)) => {
                    self.active = None;
                    self.muxer.set_active(false);
                    let _ = ack.send(());
                }
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    /// Moves packets between the queues and the muxer, then interrupts the guest if any used
    /// ring got something.
    fn process_queues(&mut self) {
        self.more_work = false;
        let Some(active) = self.active.as_mut() else { return };
        let Activation { memory, queues, interrupt } = active;
        let [rx, tx, _event] = queues.as_mut_slice() else { return };
        let (mut rx_used, mut tx_used) = (false, false);
        for pass in 0.. {
            if pass == PASSES_PER_WAKEUP {
                self.more_work = true;
                break;
            }
            let mut pump = Pump { memory, muxer: &mut self.muxer, dropped: &self.dropped };
            let tx_pass = pump.tx(tx);
            let rx_pass = pump.rx(rx);
            tx_used |= tx_pass.chains > 0;
            rx_used |= rx_pass.chains > 0;
            if tx_pass.hit_limit() || rx_pass.hit_limit() {
                self.more_work = true;
                break;
            }
            if tx_pass.chains == 0 && rx_pass.chains == 0 {
                break;
            }
        }
        let wants_interrupt = |queue: &mut Queue, used: bool| {
            // An unreadable used_event is the guest's doing; erring towards an interrupt is
            // harmless.
            used && queue.needs_notification(&*memory).unwrap_or(true)
        };
        let rx_wants = wants_interrupt(rx, rx_used);
        let tx_wants = wants_interrupt(tx, tx_used);
        if rx_wants || tx_wants {
            if let Err(err) = interrupt.signal_used_queue() {
                eprintln!("bazaar-vmm: virtio-vsock: raising the interrupt failed: {err}");
            }
        }
    }
}

/// One pass's view of the device: guest memory, the connections, the drop counter.
struct Pump<'a> {
    memory: &'a GuestMemory,
    muxer: &'a mut Muxer,
    dropped: &'a DropCounter,
}

impl Pump<'_> {
    /// Hands the guest's packets to the muxer; every chain is returned as used, bad ones
    /// included.
    fn tx(&mut self, queue: &mut Queue) -> Pass {
        let mut pass = Pass::default();
        while !pass.hit_limit() && !self.muxer.resets_backlogged() {
            let Some(chain) = queue.pop_descriptor_chain(self.memory) else { break };
            let head = chain.head_index();
            match packet::read_tx_packet(self.memory, chain) {
                Ok(packet) => self.muxer.on_guest_packet(packet),
                Err(err) => self.dropped.report("a tx chain", &err),
            }
            self.return_chain(queue, head, 0);
            pass.chains += 1;
        }
        pass
    }

    /// Fills the guest's rx buffers with what the muxer has for it.
    fn rx(&mut self, queue: &mut Queue) -> Pass {
        let mut pass = Pass::default();
        while !pass.hit_limit() {
            let Some(chain) = queue.pop_descriptor_chain(self.memory) else { break };
            let head = chain.head_index();
            let len = match RxBuffer::new(self.memory, chain) {
                Err(err) => {
                    self.dropped.report("an rx chain", &err);
                    0
                }
                Ok(buffer) => {
                    let capacity = buffer.payload_capacity();
                    let Some((header, payload)) = self.muxer.next_rx_packet(capacity) else {
                        // Nothing to say: the buffer stays with the device for later.
                        queue.go_to_previous_position();
                        break;
                    };
                    buffer.write(&header, &payload).unwrap_or_else(|err| {
                        self.dropped.report("an rx chain", &err);
                        self.muxer.undelivered(&header);
                        0
                    })
                }
            };
            self.return_chain(queue, head, len);
            pass.chains += 1;
        }
        pass
    }

    /// Puts chain `head` in the used ring with `len` bytes written. A guest that corrupted its
    /// ring (an out-of-range head) loses the entry, nothing else.
    fn return_chain(&self, queue: &mut Queue, head: u16, len: u32) {
        if let Err(err) = queue.add_used(self.memory, head, len) {
            self.dropped.report("a used ring entry", &err);
        }
    }
}
