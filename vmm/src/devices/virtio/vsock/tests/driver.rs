//! The test's side of the device: a guest driver with its three queues in guest memory
//! (virtio-queue's `MockSplitQueue`), and host clients on real Unix sockets in a temporary
//! directory.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::super::connection::BUF_ALLOC;
use super::super::muxer::Timeouts;
use super::super::packet::{op, Header, HEADER_SIZE, TYPE_STREAM};
use super::super::{Vsock, HOST_CID};
use crate::devices::virtio::{InterruptLine, VirtioDevice, VirtioInterrupt};
use crate::memory::GuestMemory;

pub const GUEST_CID: u64 = 3;
/// Descriptor flags (virtio 1.2, 2.7.5).
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// How long any wait in these tests may take before it counts as a failure.
pub const WAIT: Duration = Duration::from_secs(10);
/// Entries per queue.
const QUEUE_LEN: u16 = 64;
/// Each rx buffer and each tx chain gets its own area of this size.
pub const SLOT_SIZE: u64 = 0x1_0000;
const RX_BUFFERS: u64 = 0x10_0000;
const TX_BUFFERS: u64 = 0x50_0000;
/// tx chains take two descriptor-table entries each, so there are half as many slots.
const TX_SLOTS: u16 = QUEUE_LEN / 2;
pub const MEMORY_SIZE: u64 = 16 << 20;

/// Guest memory for one test.
pub fn memory() -> GuestMemory {
    crate::memory::create(MEMORY_SIZE).expect("guest memory")
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Default)]
pub struct CountingLine(AtomicU32);

impl InterruptLine for CountingLine {
    fn raise(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl CountingLine {
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One descriptor of a hand-made tx chain.
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write_only: bool,
}

pub struct Driver<'a> {
    mem: &'a GuestMemory,
    rx: MockSplitQueue<'a, GuestMemory>,
    tx: MockSplitQueue<'a, GuestMemory>,
    event: MockSplitQueue<'a, GuestMemory>,
    pub line: Arc<CountingLine>,
    rx_posted: u16,
    rx_seen: u16,
    tx_posted: u16,
    // Dropped before `dir`: the device removes its socket file on drop.
    pub device: Vsock,
    dir: tempfile::TempDir,
}

impl<'a> Driver<'a> {
    /// A device with default timeouts, not yet activated.
    pub fn new(mem: &'a GuestMemory) -> Driver<'a> {
        Self::with_timeouts(mem, Timeouts::default())
    }

    pub fn with_timeouts(mem: &'a GuestMemory, timeouts: Timeouts) -> Driver<'a> {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("vsock.sock");
        let device = Vsock::with_timeouts(GUEST_CID, uds, timeouts).expect("device");
        let queue_at =
            |index: u64| MockSplitQueue::create(mem, GuestAddress(index * 0x1_0000), QUEUE_LEN);
        Driver {
            mem,
            rx: queue_at(0),
            tx: queue_at(1),
            event: queue_at(2),
            line: Arc::new(CountingLine::default()),
            rx_posted: 0,
            rx_seen: 0,
            tx_posted: 0,
            device,
            dir,
        }
    }

    /// A device already activated.
    pub fn active(mem: &'a GuestMemory) -> Driver<'a> {
        let mut driver = Self::new(mem);
        driver.activate();
        driver
    }

    pub fn activate(&mut self) {
        let queues: Vec<Queue> = [&self.rx, &self.tx, &self.event]
            .iter()
            .map(|queue| queue.create_queue().expect("queue"))
            .collect();
        let interrupt = VirtioInterrupt::new(Arc::new(AtomicU32::new(0)), self.line.clone());
        self.device.activate(self.mem.clone(), queues, interrupt).expect("activate");
    }

    /// Notifies every queue, as a driver might before the device is live.
    pub fn queue_notify_all(&mut self) {
        for index in 0..3 {
            self.device.queue_notify(index);
        }
    }

    pub fn uds(&self) -> PathBuf {
        self.device.uds_path().to_path_buf()
    }

    /// Where a guest connection to host `port` is forwarded.
    pub fn port_path(&self, port: u32) -> PathBuf {
        self.dir.path().join(format!("vsock.sock_{port}"))
    }

    /// Offers `count` rx buffers of `size` bytes each.
    pub fn post_rx(&mut self, count: u16, size: u32) {
        assert!(size as u64 <= SLOT_SIZE);
        for _ in 0..count {
            assert!(self.rx_posted - self.rx_seen < QUEUE_LEN, "rx queue full");
            let slot = self.rx_posted % QUEUE_LEN;
            let desc = SplitDescriptor::new(rx_buffer(slot), size, DESC_F_WRITE, 0);
            self.rx.add_desc_chains(&[RawDescriptor::from(desc)], slot).expect("rx chain");
            self.rx_posted += 1;
        }
        self.device.queue_notify(0);
    }

    /// Offers an rx chain the device must not use (a device-readable descriptor).
    pub fn post_readonly_rx(&mut self) {
        let slot = self.rx_posted % QUEUE_LEN;
        let desc = SplitDescriptor::new(rx_buffer(slot), 4096, 0, 0);
        self.rx.add_desc_chains(&[RawDescriptor::from(desc)], slot).expect("rx chain");
        self.rx_posted += 1;
        self.device.queue_notify(0);
    }

    /// Entries in the rx used ring so far.
    pub fn rx_used(&self) -> u16 {
        self.rx.used().idx().load()
    }

    /// The next rx used entry: (length written, header and payload when the length allows).
    pub fn next_rx_raw(&mut self) -> (u32, Option<(Header, Vec<u8>)>) {
        let seen = self.rx_seen;
        wait_until("an rx buffer to be used", || self.rx_used() != seen);
        let used = self.rx.used().ring().ref_at(usize::from(seen % QUEUE_LEN)).expect("used");
        let used = used.load();
        self.rx_seen += 1;
        let slot = u16::try_from(used.id()).expect("descriptor index");
        assert_eq!(slot, seen % QUEUE_LEN, "rx buffers are used in order");
        let len = used.len();
        if (len as usize) < HEADER_SIZE {
            return (len, None);
        }
        let mut raw = [0u8; HEADER_SIZE];
        self.mem.read_slice(&mut raw, GuestAddress(rx_buffer(slot))).expect("header");
        let header = Header::decode(&raw);
        let mut payload = vec![0u8; len as usize - HEADER_SIZE];
        let at = GuestAddress(rx_buffer(slot) + HEADER_SIZE as u64);
        self.mem.read_slice(&mut payload, at).expect("payload");
        assert_eq!(header.len as usize, payload.len(), "header len matches the used length");
        (len, Some((header, payload)))
    }

    /// The next packet the device sent.
    pub fn recv(&mut self) -> (Header, Vec<u8>) {
        let (len, packet) = self.next_rx_raw();
        packet.unwrap_or_else(|| panic!("rx buffer used with only {len} bytes"))
    }

    /// The next packet, which must have operation `op`.
    pub fn expect(&mut self, op: u16) -> (Header, Vec<u8>) {
        let (header, payload) = self.recv();
        assert_eq!(header.op, op, "unexpected packet {header:?}");
        assert_eq!((header.src_cid, header.dst_cid), (HOST_CID, GUEST_CID));
        (header, payload)
    }

    /// Sends `header` (its `len` set) and `payload` as one tx descriptor.
    pub fn send(&mut self, header: Header, payload: &[u8]) {
        let header = Header { len: payload.len() as u32, ..header };
        let at = self.tx_buffer();
        self.mem.write_slice(&header.encode(), GuestAddress(at)).expect("header");
        self.mem.write_slice(payload, GuestAddress(at + HEADER_SIZE as u64)).expect("payload");
        let len = (HEADER_SIZE + payload.len()) as u32;
        self.send_chain(&[Desc { addr: at, len, write_only: false }]);
    }

    /// The buffer area of the next tx chain.
    pub fn tx_buffer(&self) -> u64 {
        TX_BUFFERS + u64::from(self.tx_posted % TX_SLOTS) * SLOT_SIZE
    }

    /// Sends a hand-made chain of up to two descriptors.
    pub fn send_chain(&mut self, descs: &[Desc]) {
        assert!(!descs.is_empty() && descs.len() <= 2);
        let first = (self.tx_posted % TX_SLOTS) * 2;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, desc)| {
                let mut flags = if desc.write_only { DESC_F_WRITE } else { 0 };
                let last = i + 1 == descs.len();
                if !last {
                    flags |= DESC_F_NEXT;
                }
                RawDescriptor::from(SplitDescriptor::new(
                    desc.addr,
                    desc.len,
                    flags,
                    first + i as u16 + 1,
                ))
            })
            .collect();
        self.tx.add_desc_chains(&raw, first).expect("tx chain");
        self.tx_posted += 1;
        self.device.queue_notify(1);
    }

    /// Waits until the device has taken every tx chain sent so far.
    pub fn wait_tx_done(&self) {
        let posted = self.tx_posted;
        wait_until("tx chains to be used", || self.tx.used().idx().load() == posted);
    }

    /// A header from the guest's port `guest_port` to host port `host_port`.
    pub fn header(&self, op: u16, guest_port: u32, host_port: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: guest_port,
            dst_port: host_port,
            socket_type: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Header::default()
        }
    }

    /// A host client that has sent `CONNECT <port>`.
    pub fn host_connect(&self, port: u32) -> UnixStream {
        let mut client = UnixStream::connect(self.uds()).expect("connect to the device");
        client.set_read_timeout(Some(WAIT)).expect("timeout");
        // A device that turns clients away may have closed the stream already (EPIPE); the
        // tests that expect that read the EOF next.
        let _ = client.write_all(format!("CONNECT {port}\n").as_bytes());
        client
    }

    /// A guest-initiated connection from guest port `guest_port` to host port `host_port`,
    /// through a listener bound here at `<uds>_<host_port>`: the listener (kept alive) and the
    /// host end. Needs an rx buffer for the RESPONSE.
    pub fn guest_connect(&mut self, guest_port: u32, host_port: u32) -> (UnixListener, UnixStream) {
        let listener = UnixListener::bind(self.port_path(host_port)).expect("bind");
        self.send(self.header(op::REQUEST, guest_port, host_port), &[]);
        let (response, _) = self.expect(op::RESPONSE);
        assert_eq!((response.src_port, response.dst_port), (host_port, guest_port));
        assert_eq!((response.buf_alloc, response.fwd_cnt), (BUF_ALLOC, 0));
        // The device connected before answering, so this does not block.
        let (host, _) = listener.accept().expect("accept");
        host.set_read_timeout(Some(WAIT)).expect("timeout");
        (listener, host)
    }

    /// A host-initiated connection to guest port `port`, accepted by the guest with a receive
    /// buffer of `buf_alloc`: the client (past its `OK` line) and the host-side port.
    pub fn establish(&mut self, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
        self.post_rx(1, 4096);
        let mut client = self.host_connect(port);
        let (request, _) = self.expect(op::REQUEST);
        assert_eq!(request.dst_port, port);
        let response =
            Header { buf_alloc, ..self.header(op::RESPONSE, request.dst_port, request.src_port) };
        self.send(response, &[]);
        assert_eq!(read_line(&mut client), format!("OK {}", request.src_port));
        (client, request.src_port)
    }
}

fn rx_buffer(slot: u16) -> u64 {
    RX_BUFFERS + u64::from(slot) * SLOT_SIZE
}

/// Reads one line from a blocking stream, a byte at a time (nothing after it is consumed).
pub fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).expect("read a line");
        assert_eq!(n, 1, "EOF after {:?}", String::from_utf8_lossy(&line));
        if byte[0] == b'\n' {
            return String::from_utf8(line).expect("utf-8 line");
        }
        line.push(byte[0]);
    }
}

/// Whether the peer closed `stream` (EOF, or reset) within [`WAIT`], any data before that
/// being discarded.
pub fn sees_eof(stream: &mut UnixStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}
