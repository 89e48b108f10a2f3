//! virtio-vsock (virtio 1.2, section 5.10), stream sockets only, with the host side as Unix
//! sockets in the "hybrid vsock" convention (see `host`).
//!
//! - `packet`: the packet header and reading/writing packets in descriptor chains;
//! - `connection`: one stream's state and credit accounting;
//! - `host`: the Unix-socket side (`CONNECT <port>` handshake, `<socket>_<port>` forwarding);
//! - `muxer`: the connection table and the choice of the next packet for the guest;
//! - `worker`: the device thread, its epoll loop and the queue processing.
//!
//! [`Vsock`] itself only talks to its worker: `queue_notify` (on a vCPU thread) writes an
//! eventfd, which a VMM may instead register with KVM as an ioeventfd
//! ([`Vsock::queue_events`]); activation and reset are commands over a channel.

mod connection;
mod host;
mod muxer;
mod packet;
mod worker;

use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::muxer::{Muxer, Timeouts};
use self::worker::{Activation, Command, Worker};
use super::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::memory::GuestMemory;

/// virtio device id of a socket device.
pub const DEVICE_TYPE: u32 = 19;
/// The host's well-known CID.
pub const HOST_CID: u64 = 2;
/// Queue indexes.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Number of queues (rx, tx, event; the event queue exists but nothing is ever sent on it).
pub const NUM_QUEUES: usize = 3;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];
/// How long `activate` and `reset` wait for the worker to take the new state. Bounded: the
/// worker never blocks between two looks at its commands.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CID is reserved (0, 1, 2, 0xffffffff) or has its upper 32 bits set.
    #[error("guest CID {0} is reserved or does not fit in 32 bits")]
    InvalidCid(u64),
    /// The hybrid vsock socket could not be bound.
    #[error("binding the hybrid vsock socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An eventfd could not be created.
    #[error("creating an eventfd for virtio-vsock: {0}")]
    EventFd(#[source] io::Error),
    /// The worker's epoll set could not be set up.
    #[error("setting up the virtio-vsock worker's epoll set: {0}")]
    Epoll(#[source] io::Error),
    /// The worker thread could not be started.
    #[error("spawning the virtio-vsock worker thread: {0}")]
    SpawnWorker(#[source] io::Error),
}

/// Counts what the device dropped because the guest broke the protocol (bad descriptor
/// chains, spoofed packets), and says so on stderr for the first few: a hostile guest must
/// not be able to flood the VMM's log.
#[derive(Default)]
pub(crate) struct DropCounter {
    count: AtomicU64,
}

impl DropCounter {
    const LOGGED: u64 = 10;

    fn report(&self, what: &str, why: &dyn Display) {
        let seen = self.count.fetch_add(1, Ordering::Relaxed);
        if seen < Self::LOGGED {
            eprintln!("bazaar-vmm: virtio-vsock: dropped {what}: {why}");
        }
        if seen + 1 == Self::LOGGED {
            eprintln!("bazaar-vmm: virtio-vsock: further drops are only counted");
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// A virtio-vsock device whose host end is the Unix socket `uds_path`.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    acked_features: u64,
    queue_events: Vec<EventFd>,
    control: EventFd,
    commands: mpsc::Sender<Command>,
    worker: Option<JoinHandle<()>>,
    dropped: Arc<DropCounter>,
}

impl Vsock {
    /// A device for the guest with CID `guest_cid`. Binds `uds_path` now, so host clients can
    /// connect as soon as the VMM is up (they are turned away until the guest driver starts),
    /// and starts the worker thread, idle until activation. The socket file is removed when
    /// the device is dropped; an existing file at `uds_path` is an error, not replaced.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, Error> {
        Self::with_timeouts(guest_cid, uds_path, Timeouts::default())
    }

    fn with_timeouts(
        guest_cid: u64,
        uds_path: PathBuf,
        timeouts: Timeouts,
    ) -> Result<Vsock, Error> {
        if matches!(guest_cid, 0..=2) || guest_cid >= u64::from(u32::MAX) {
            return Err(Error::InvalidCid(guest_cid));
        }
        let listener = host::bind(&uds_path)
            .map_err(|source| Error::Bind { path: uds_path.clone(), source })?;
        // From here on the socket file is ours: remove it on every failure below.
        let remove_socket = |err: Error| {
            let _ = std::fs::remove_file(&uds_path);
            err
        };
        let new_eventfd = || EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd);
        let queue_events: Vec<EventFd> = (0..NUM_QUEUES)
            .map(|_| new_eventfd())
            .collect::<Result<_, _>>()
            .map_err(remove_socket)?;
        let control = new_eventfd().map_err(remove_socket)?;
        let clone = |event: &EventFd| event.try_clone().map_err(Error::EventFd);
        let worker_queue_events: Vec<EventFd> =
            queue_events.iter().map(clone).collect::<Result<_, _>>().map_err(remove_socket)?;
        let worker_control = clone(&control).map_err(remove_socket)?;

        let dropped = Arc::new(DropCounter::default());
        let muxer = Muxer::new(guest_cid, uds_path.clone(), listener, timeouts, dropped.clone());
        let (commands, receiver) = mpsc::channel();
        let worker =
            Worker::new(worker_control, receiver, worker_queue_events, muxer, dropped.clone())
                .map_err(|err| remove_socket(Error::Epoll(err)))?;
        let handle = std::thread::Builder::new()
            .name("virtio-vsock".into())
            .spawn(move || worker.run())
            .map_err(|err| remove_socket(Error::SpawnWorker(err)))?;
        Ok(Vsock {
            guest_cid,
            uds_path,
            acked_features: 0,
            queue_events,
            control,
            commands,
            worker: Some(handle),
            dropped,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The hybrid vsock socket host clients connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// How many descriptor chains or packets from the guest were dropped as malformed or
    /// misaddressed.
    pub fn dropped_packets(&self) -> u64 {
        self.dropped.count()
    }

    fn send(&self, command: Command) -> io::Result<()> {
        self.commands.send(command).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the vsock worker has stopped")
        })?;
        self.control.write(1)
    }

    /// Sends the command `make` builds around an acknowledgement channel, and waits for the
    /// acknowledgement.
    fn send_acknowledged(&self, make: impl FnOnce(mpsc::Sender<()>) -> Command) -> io::Result<()> {
        let (ack, acked) = mpsc::channel();
        self.send(make(ack))?;
        acked.recv_timeout(ACK_TIMEOUT).map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "the vsock worker did not acknowledge")
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (index, byte) in data.iter_mut().enumerate() {
            let at = offset.checked_add(index as u64).and_then(|at| usize::try_from(at).ok());
            *byte = at.and_then(|at| config.get(at)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only.
    }

    fn activate(
        &mut self,
        memory: GuestMemory,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::BadSetup(format!(
                "virtio-vsock needs {NUM_QUEUES} queues, got {}",
                queues.len()
            )));
        }
        let activation = Box::new(Activation { memory, queues, interrupt });
        self.send_acknowledged(|ack| Command::Activate(activation, ack))
            .map_err(ActivateError::Backend)
    }

    fn queue_notify(&mut self, index: u16) {
        if let Some(event) = self.queue_events.get(usize::from(index)) {
            // Only fails when the counter is saturated, which means a wakeup is pending anyway.
            let _ = event.write(1);
        }
    }

    /// One eventfd per queue (rx, tx, event), written by `queue_notify` or, registered as KVM
    /// ioeventfds, by KVM itself.
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn reset(&mut self) {
        // Nothing to report to: a worker that is gone holds no queues either.
        let _ = self.send_acknowledged(Command::Reset);
        self.acked_features = 0;
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = self.send(Command::Stop);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests;
