//! The one thread per device that processes its queues.
//!
//! The vCPU thread only writes a queue's eventfd (later KVM does it through an ioeventfd); all
//! queue work happens on the worker, which sleeps in epoll on: a control eventfd (activate,
//! reset, stop, with the request itself on a channel), the queue eventfds, and whatever host
//! descriptors the device adds (a tap). The thread is spawned when the device is created, not
//! at activation, so that the vCPU thread never needs `clone` (per-thread seccomp filters).
//!
//! Activation and reset wait for the worker's answer: after `reset` returns, the worker has
//! dropped the queues and will not touch guest memory the driver may reuse.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateError, VirtioInterrupt};
use crate::memory::GuestMemory;

/// Epoll token of the control eventfd.
const CONTROL_TOKEN: u64 = 0;
/// Epoll token of queue 0; queue `i` is `QUEUE_TOKEN_BASE + i`.
const QUEUE_TOKEN_BASE: u64 = 1;
/// Tokens from here on are the device's own (see [`Poller::watch`]).
pub(crate) const BACKEND_TOKEN_BASE: u64 = 1 << 32;

/// What a device's worker needs to start: everything `VirtioDevice::activate` receives, plus
/// the features the driver accepted.
pub(crate) struct Activation {
    pub memory: GuestMemory,
    pub queues: Vec<Queue>,
    pub interrupt: VirtioInterrupt,
    pub features: u64,
}

/// The device-specific half of a worker. All methods run on the worker thread.
pub(crate) trait QueueProcessor: Send + 'static {
    /// Takes the queues and starts serving them. An error refuses the activation.
    fn activate(&mut self, activation: Activation, poller: &Poller) -> Result<(), ActivateError>;
    /// Drops the queues and anything tied to the driver's buffers.
    fn reset(&mut self, poller: &Poller);
    /// The driver made buffers available on queue `index` (may come while not active).
    fn queue_notified(&mut self, index: usize, poller: &Poller);
    /// A descriptor the processor watches under `token` is ready with `events`.
    fn backend_ready(&mut self, token: u64, events: EventSet, poller: &Poller) {
        let _ = (token, events, poller);
    }
}

/// The worker's epoll, through which a processor watches its own descriptors and asks to be
/// woken again.
pub(crate) struct Poller {
    epoll: Epoll,
    queue_events: Vec<EventFd>,
}

impl Poller {
    /// Watches `fd` for readability, reported as `token` (at least [`BACKEND_TOKEN_BASE`]).
    pub fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        debug_assert!(token >= BACKEND_TOKEN_BASE);
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
    }

    /// Stops watching `fd`.
    pub fn unwatch(&self, fd: RawFd) -> io::Result<()> {
        self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Queues another notification of queue `index` to this worker. A processor stops after a
    /// batch and calls this when work is left, so that a guest that keeps its queue full
    /// cannot starve control requests (a reset waits for the worker).
    pub fn renotify(&self, index: usize) {
        if let Some(event) = self.queue_events.get(index) {
            let _ = event.write(1);
        }
    }
}

enum Control {
    Activate(Box<Activation>, mpsc::Sender<Result<(), ActivateError>>),
    Reset(mpsc::Sender<()>),
    Stop,
}

/// The device's handle on its worker thread: queue eventfds, control, and the thread to join.
pub(crate) struct Worker {
    queue_events: Vec<EventFd>,
    control: mpsc::Sender<Control>,
    control_event: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Spawns thread `name` running `processor` for a device with `queue_count` queues.
    pub fn spawn<P: QueueProcessor>(
        name: &str,
        queue_count: usize,
        processor: P,
    ) -> io::Result<Self> {
        let queue_events =
            (0..queue_count).map(|_| EventFd::new(EFD_NONBLOCK)).collect::<io::Result<Vec<_>>>()?;
        let control_event = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let watch = |fd: RawFd, token: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
        };
        watch(control_event.as_raw_fd(), CONTROL_TOKEN)?;
        for (index, event) in queue_events.iter().enumerate() {
            watch(event.as_raw_fd(), QUEUE_TOKEN_BASE + index as u64)?;
        }
        let (control, requests) = mpsc::channel();
        let thread_state = WorkerThread {
            poller: Poller {
                epoll,
                queue_events: queue_events
                    .iter()
                    .map(EventFd::try_clone)
                    .collect::<Result<_, _>>()?,
            },
            control_event: control_event.try_clone()?,
            requests,
            processor,
        };
        let thread =
            thread::Builder::new().name(name.to_string()).spawn(move || thread_state.run())?;
        Ok(Self { queue_events, control, control_event, thread: Some(thread) })
    }

    /// The per-queue eventfds, in queue order (for KVM ioeventfds).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// Tells the worker that queue `index` has new buffers. Cheap: one eventfd write.
    pub fn notify(&self, index: u16) {
        if let Some(event) = self.queue_events.get(usize::from(index)) {
            // Only fails when the counter would overflow, and then a wake-up is pending anyway.
            let _ = event.write(1);
        }
    }

    /// Hands the queues to the worker and waits for it to accept them.
    pub fn activate(&self, activation: Activation) -> Result<(), ActivateError> {
        let (reply, answer) = mpsc::channel();
        self.send(Control::Activate(Box::new(activation), reply))
            .map_err(ActivateError::Backend)?;
        answer.recv().map_err(|_| ActivateError::Backend(worker_gone()))?
    }

    /// Makes the worker drop its queues, and waits until it has.
    pub fn reset(&self) {
        let (reply, answer) = mpsc::channel();
        if self.send(Control::Reset(reply)).is_ok() {
            // An error means the thread is gone, and with it the queues.
            let _ = answer.recv();
        }
    }

    fn send(&self, request: Control) -> io::Result<()> {
        self.control.send(request).map_err(|_| worker_gone())?;
        self.control_event.write(1)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.send(Control::Stop);
        if let Some(thread) = self.thread.take() {
            // A worker that panicked has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

fn worker_gone() -> io::Error {
    io::Error::other("the device's worker thread has exited")
}

struct WorkerThread<P> {
    poller: Poller,
    control_event: EventFd,
    requests: mpsc::Receiver<Control>,
    processor: P,
}

impl<P: QueueProcessor> WorkerThread<P> {
    fn run(mut self) {
        if let Err(e) = crate::seccomp::apply_device_filter() {
            // Unconfined it must not serve a guest: requests now get "worker gone".
            eprintln!("bazaar-vmm: device worker stops: {e}");
            return;
        }
        let mut events = vec![EpollEvent::default(); 8 + self.poller.queue_events.len()];
        loop {
            let ready = match self.poller.epoll.wait(-1, &mut events) {
                Ok(ready) => ready,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The epoll fd is ours and valid: nothing else can fail, and retrying a
                // failing wait would only spin. Requests now get "worker gone".
                Err(_) => return,
            };
            for event in &events[..ready] {
                if !self.dispatch(event.data(), event.event_set()) {
                    return;
                }
            }
        }
    }

    /// Handles one ready descriptor; false when the worker must stop.
    fn dispatch(&mut self, token: u64, events: EventSet) -> bool {
        match token {
            CONTROL_TOKEN => return self.handle_control(),
            t if t >= BACKEND_TOKEN_BASE => {
                self.processor.backend_ready(t, events, &self.poller);
            }
            t => {
                let index = (t - QUEUE_TOKEN_BASE) as usize;
                if let Some(event) = self.poller.queue_events.get(index) {
                    // Clears the counter; EAGAIN (already cleared) is harmless.
                    let _ = event.read();
                    self.processor.queue_notified(index, &self.poller);
                }
            }
        }
        true
    }

    fn handle_control(&mut self) -> bool {
        let _ = self.control_event.read();
        loop {
            match self.requests.try_recv() {
                Ok(Control::Activate(activation, reply)) => {
                    let _ = reply.send(self.processor.activate(*activation, &self.poller));
                }
                Ok(Control::Reset(reply)) => {
                    self.processor.reset(&self.poller);
                    let _ = reply.send(());
                }
                Ok(Control::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }
}
