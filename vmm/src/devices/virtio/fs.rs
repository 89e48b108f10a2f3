//! virtio-fs as a vhost-user frontend: the file system itself is served by a vhost-user backend
//! process (virtiofsd, the same one the QEMU backend uses), which maps guest memory from the
//! memfd and processes the queues directly. The VMM only negotiates features, hands over the
//! memory table and vring addresses, and relays the backend's "used buffers" signals to the
//! guest as virtio-mmio interrupts.
//!
//! Every vhost-user message after the handshake (memory table, rings, stopping them on reset)
//! is sent by the device's own thread, not the vCPU thread that writes the status register:
//! the vCPU seccomp filter allows no socket calls.
//!
//! Why a frontend and not an in-process file server: virtiofsd is maintained, sandboxes itself
//! (namespaces, seccomp) and is already installed and tested for QEMU; one file server for both
//! backends means one set of file system semantics to get right.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::memory::GuestMemory;

/// virtio device id of a file system device.
pub const DEVICE_TYPE_FS: u32 = 26;
/// The longest tag the config space holds (virtio 1.2, 5.11.4), in bytes.
pub const TAG_MAX: usize = 36;
/// Queue 0 is the high-priority queue (FUSE_INTERRUPT, FORGET), queue 1 the one request queue.
const NUM_QUEUES: usize = 2;
/// Queue size offered to the driver; virtiofsd accepts up to 1024.
const QUEUE_SIZE: u16 = 256;
/// vring features that are the backend's business (it processes the rings), passed through to
/// the driver when the backend offers them.
const RING_FEATURES: u64 = (1 << 28) | (1 << 29); // INDIRECT_DESC, EVENT_IDX
/// How long the vCPU thread waits for the device thread to start or stop the backend.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Epoll token of the relay's control eventfd; queue `i` uses token `i`.
const CONTROL_TOKEN: u64 = u64::MAX;

/// Errors setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tag is empty or longer than the config space holds.
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes")]
    BadTag(String),
    /// The backend could not be reached or refused the handshake.
    #[error("vhost-user backend at {path}: {what}: {source}")]
    Backend {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    /// An eventfd or the relay thread could not be made.
    #[error("virtio-fs {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-fs device whose requests a vhost-user backend serves.
pub struct VhostUserFs {
    tag: String,
    backend_features: u64,
    acked_features: u64,
    /// Written when the driver notifies a queue (by the transport, or by KVM as ioeventfds);
    /// the backend waits on them.
    kicks: Vec<EventFd>,
    relay: Relay,
}

/// The backend's side as the device thread holds it.
struct Backend {
    frontend: Frontend,
    backend_features: u64,
    kicks: Vec<EventFd>,
    /// Written by the backend when it used buffers; the device thread turns them into
    /// interrupts.
    calls: Vec<EventFd>,
}

impl VhostUserFs {
    /// Connects to the backend listening at `socket` and agrees on the vhost-user protocol.
    /// The guest sees a file system named `tag`.
    pub fn new(tag: &str, socket: &Path) -> Result<Self, Error> {
        if tag.is_empty() || tag.len() > TAG_MAX {
            return Err(Error::BadTag(tag.to_string()));
        }
        let backend = |what| move |source| Error::Backend { path: socket.into(), what, source };
        let mut frontend =
            Frontend::connect(socket, NUM_QUEUES as u64).map_err(backend("cannot connect"))?;
        frontend.set_owner().map_err(backend("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(backend("GET_FEATURES"))?;
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered =
                frontend.get_protocol_features().map_err(backend("GET_PROTOCOL_FEATURES"))?;
            // Nothing optional is needed: queues are set one by one, no replies are awaited
            // beyond the protocol's own, and the backend never calls back into the VMM.
            let wanted = offered & VhostUserProtocolFeatures::MQ;
            frontend.set_protocol_features(wanted).map_err(backend("SET_PROTOCOL_FEATURES"))?;
        }
        let eventfd =
            |what| EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io { what, source });
        let kicks: Vec<EventFd> =
            (0..NUM_QUEUES).map(|_| eventfd("kick eventfd")).collect::<Result<_, _>>()?;
        let calls: Vec<EventFd> =
            (0..NUM_QUEUES).map(|_| eventfd("call eventfd")).collect::<Result<_, _>>()?;
        let thread_kicks = kicks
            .iter()
            .map(|k| k.try_clone().map_err(|source| Error::Io { what: "kick eventfd", source }))
            .collect::<Result<_, _>>()?;
        let backend = Backend { frontend, backend_features, kicks: thread_kicks, calls };
        let relay = Relay::spawn(backend)?;
        Ok(Self { tag: tag.to_string(), backend_features, acked_features: 0, kicks, relay })
    }
}

impl Backend {
    /// Hands memory and rings to the backend and starts them.
    fn start(&mut self, memory: &GuestMemory, queues: &[Queue], acked: u64) -> Result<(), String> {
        let protocol = self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        fn fail(what: &'static str) -> impl Fn(vhost::Error) -> String {
            move |e| format!("{what}: {e}")
        }
        self.frontend.set_features(acked | protocol).map_err(fail("SET_FEATURES"))?;
        let regions = memory
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail("guest memory is not file-backed"))?;
        self.frontend.set_mem_table(&regions).map_err(fail("SET_MEM_TABLE"))?;
        for (index, queue) in queues.iter().enumerate() {
            let config = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host_address(memory, queue.desc_table())?,
                used_ring_addr: host_address(memory, queue.used_ring())?,
                avail_ring_addr: host_address(memory, queue.avail_ring())?,
                log_addr: None,
            };
            self.frontend.set_vring_num(index, queue.size()).map_err(fail("SET_VRING_NUM"))?;
            self.frontend.set_vring_addr(index, &config).map_err(fail("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, queue.next_avail())
                .map_err(fail("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(index, &self.calls[index])
                .map_err(fail("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, &self.kicks[index])
                .map_err(fail("SET_VRING_KICK"))?;
            if protocol != 0 {
                // With protocol features negotiated, rings start disabled until enabled.
                self.frontend.set_vring_enable(index, true).map_err(fail("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops the rings (GET_VRING_BASE); the driver sets everything up again.
    fn stop(&mut self) {
        for index in 0..NUM_QUEUES {
            let _ = self.frontend.get_vring_base(index);
        }
    }
}

/// The VMM's own address of guest physical address `addr`: vhost-user vring addresses are in
/// the frontend's address space, which the backend translates through the memory table.
fn host_address(memory: &GuestMemory, addr: u64) -> Result<u64, String> {
    memory
        .get_host_address(GuestAddress(addr))
        .map(|ptr| ptr as u64)
        .map_err(|e| format!("ring address {addr:#x} is not in guest RAM: {e}"))
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.backend_features & RING_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    /// The tag, NUL-padded to 36 bytes, then the number of request queues (u32 LE).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; TAG_MAX + 4];
        config[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        config[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        super::read_config_bytes(&config, offset, data);
    }

    /// The config space is read-only for the driver.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        memory: GuestMemory,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let acked = self.acked_features;
        let (reply, answer) = mpsc::channel();
        self.relay
            .send(RelayCommand::Activate { memory, queues, acked, interrupt, reply })
            .map_err(ActivateError::Backend)?;
        match answer.recv_timeout(REPLY_TIMEOUT) {
            Ok(result) => result.map_err(ActivateError::BadSetup),
            Err(_) => Err(ActivateError::Backend(std::io::Error::other(
                "the virtio-fs thread did not answer the activation",
            ))),
        }
    }

    fn queue_notify(&mut self, index: u16) {
        if let Some(kick) = self.kicks.get(usize::from(index)) {
            // A full eventfd counter still wakes the backend; nothing is lost.
            let _ = kick.write(1);
        }
    }

    /// The kicks go straight to the backend, which waits on them.
    fn queue_events(&self) -> &[EventFd] {
        &self.kicks
    }

    fn reset(&mut self) {
        let (reply, answer) = mpsc::channel();
        if self.relay.send(RelayCommand::Reset { reply }).is_ok() {
            // The driver may set the device up again only once the rings stopped.
            let _ = answer.recv_timeout(REPLY_TIMEOUT);
        }
        self.acked_features = 0;
    }
}

/// What the device thread is told.
enum RelayCommand {
    /// Start the backend on these rings and relay its calls to `interrupt`.
    Activate {
        memory: GuestMemory,
        queues: Vec<Queue>,
        acked: u64,
        interrupt: VirtioInterrupt,
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// Stop the rings and the relaying.
    Reset {
        reply: mpsc::Sender<()>,
    },
    Stop,
}

/// The device thread: it talks to the backend, and waits on the backend's call eventfds to
/// raise the device's interrupt, so the transport's InterruptStatus says why (Linux's
/// virtio-mmio handler ignores an interrupt whose status is empty). Spawned with the device,
/// before any seccomp filter is applied.
struct Relay {
    commands: mpsc::Sender<RelayCommand>,
    wake: EventFd,
    thread: Option<thread::JoinHandle<()>>,
}

impl Relay {
    fn spawn(backend: Backend) -> Result<Self, Error> {
        let io = |what| move |source| Error::Io { what, source };
        let wake = EventFd::new(EFD_NONBLOCK).map_err(io("relay eventfd"))?;
        let epoll = Epoll::new().map_err(io("relay epoll"))?;
        let watch = |fd: &EventFd, token| {
            let event = EpollEvent::new(EventSet::IN, token);
            epoll.ctl(ControlOperation::Add, std::os::fd::AsRawFd::as_raw_fd(fd), event)
        };
        watch(&wake, CONTROL_TOKEN).map_err(io("relay epoll"))?;
        for (index, call) in backend.calls.iter().enumerate() {
            watch(call, index as u64).map_err(io("relay epoll"))?;
        }
        let (commands, receiver) = mpsc::channel();
        let thread_wake = wake.try_clone().map_err(io("relay eventfd"))?;
        let thread = thread::Builder::new()
            .name("virtio-fs".into())
            .spawn(move || relay_loop(epoll, thread_wake, backend, receiver))
            .map_err(io("relay thread"))?;
        Ok(Self { commands, wake, thread: Some(thread) })
    }

    fn send(&self, command: RelayCommand) -> std::io::Result<()> {
        self.commands
            .send(command)
            .map_err(|_| std::io::Error::other("the virtio-fs relay thread is gone"))?;
        self.wake.write(1)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.send(RelayCommand::Stop).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn relay_loop(
    epoll: Epoll,
    wake: EventFd,
    mut backend: Backend,
    commands: mpsc::Receiver<RelayCommand>,
) {
    if let Err(e) = crate::seccomp::apply_device_filter() {
        // Without its filter the thread must not serve a guest: it says why and stops, and the
        // guest's file system requests go unanswered rather than served unconfined.
        eprintln!("bazaar-vmm: virtio-fs relay stops: {e}");
        return;
    }
    let mut interrupt: Option<VirtioInterrupt> = None;
    let mut events = [EpollEvent::default(); NUM_QUEUES + 1];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut used = false;
        for event in &events[..ready] {
            let token = event.data();
            if token == CONTROL_TOKEN {
                let _ = wake.read();
                while let Ok(command) = commands.try_recv() {
                    match command {
                        RelayCommand::Activate { memory, queues, acked, interrupt: i, reply } => {
                            let started = backend.start(&memory, &queues, acked);
                            if started.is_ok() {
                                interrupt = Some(i);
                            }
                            let _ = reply.send(started);
                        }
                        RelayCommand::Reset { reply } => {
                            backend.stop();
                            interrupt = None;
                            let _ = reply.send(());
                        }
                        RelayCommand::Stop => return,
                    }
                }
            } else if let Some(call) =
                usize::try_from(token).ok().and_then(|i| backend.calls.get(i))
            {
                // Reading resets the counter; several calls since the last one are one
                // interrupt.
                used |= call.read().is_ok();
            }
        }
        if let (true, Some(interrupt)) = (used, &interrupt) {
            let _ = interrupt.signal_used_queue();
        }
    }
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
