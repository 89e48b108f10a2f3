//! virtio-blk against a temporary file, the test acting as the guest driver: requests are
//! posted on a queue in guest memory and the worker thread serves them.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{
    counting_interrupt, guest_memory, readable, writable, Buf, CountingLine, DriverQueue,
};
use crate::devices::virtio::VirtioDevice;
use crate::memory::GuestMemory;

const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
/// The disk: 8 whole sectors and a partial one that does not count.
const DISK_LEN: usize = 8 * 512 + 100;

/// A temporary disk whose byte `i` is `i % 251`.
fn disk_file() -> (tempfile::NamedTempFile, File) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let bytes: Vec<u8> = (0..DISK_LEN).map(|i| (i % 251) as u8).collect();
    file.write_all(&bytes).expect("fill disk");
    let handle = file.reopen().expect("reopen");
    (file, handle)
}

struct Guest<'m> {
    memory: &'m GuestMemory,
    device: Block,
    queue: DriverQueue<'m>,
    line: Arc<CountingLine>,
}

impl<'m> Guest<'m> {
    fn start(memory: &'m GuestMemory, file: File, read_only: bool) -> Self {
        let mut device = Block::new(file, read_only).expect("block device");
        let queue = DriverQueue::new(memory, 0x1000, 16);
        let (interrupt, line) = counting_interrupt();
        device.ack_features(device.features());
        device.activate(memory.clone(), vec![queue.device_queue()], interrupt).expect("activate");
        Guest { memory, device, queue, line }
    }

    /// Posts `buffers` as one chain, notifies, and returns (status byte, used length).
    fn submit(&mut self, buffers: &[Buf]) -> (u8, u32) {
        self.memory.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
        let count = self.queue.used().len() + 1;
        let head = self.queue.post(buffers);
        self.device.queue_notify(0);
        let used = self.queue.wait_used(count);
        assert_eq!(used[count - 1].0, head, "the request's own chain comes back");
        (self.memory.read_obj(GuestAddress(STATUS)).expect("status"), used[count - 1].1)
    }

    /// A request with a 16-byte header and `data` between it and the status byte.
    fn request(&mut self, request_type: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
        self.memory.write_obj(request_type.to_le(), GuestAddress(HEADER)).expect("type");
        self.memory.write_obj(0u32, GuestAddress(HEADER + 4)).expect("reserved");
        self.memory.write_obj(sector.to_le(), GuestAddress(HEADER + 8)).expect("sector");
        let mut chain = vec![readable(HEADER, 16)];
        chain.extend_from_slice(data);
        chain.push(writable(STATUS, 1));
        self.submit(&chain)
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.memory.read_slice(&mut bytes, GuestAddress(addr)).expect("read guest memory");
        bytes
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn features_and_config_describe_the_disk() {
    let (_keep, file) = disk_file();
    let device = Block::new(file, false).expect("block device");
    assert_eq!(device.device_type(), 2);
    assert_eq!(device.queue_max_sizes(), &[256]);
    assert_eq!(device.features(), 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX);
    assert_eq!(device.capacity(), 8, "the partial last sector does not count");
    let mut config = [0xaau8; 20];
    device.read_config(0, &mut config);
    assert_eq!(&config[0..8], &8u64.to_le_bytes());
    assert_eq!(&config[8..12], &[0; 4], "size_max not offered");
    assert_eq!(&config[12..16], &254u32.to_le_bytes());
    assert_eq!(&config[16..], &[0; 4], "past the layout reads as zeros");
    let mut past = [0xaau8; 4];
    device.read_config(1 << 40, &mut past);
    assert_eq!(past, [0; 4]);

    let (_keep, file) = disk_file();
    let read_only = Block::new(file, true).expect("block device");
    assert_ne!(read_only.features() & 1 << VIRTIO_BLK_F_RO, 0);
}

#[test]
fn write_then_read_back_across_descriptors() {
    let (disk, file) = disk_file();
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, false);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 256) as u8).collect();
    memory.write_slice(&pattern, GuestAddress(DATA)).expect("data");

    let out = guest.request(VIRTIO_BLK_T_OUT, 3, &[readable(DATA, 300), readable(DATA + 300, 724)]);
    assert_eq!(out, (OK, 1), "OUT writes only the status byte");
    let mut on_disk = vec![0u8; 1024];
    disk.as_file().read_exact_at(&mut on_disk, 3 * 512).expect("read disk");
    assert_eq!(on_disk, pattern);

    let back = DATA + 0x1_0000;
    let read = guest.request(
        VIRTIO_BLK_T_IN,
        3,
        &[writable(back, 100), writable(back + 100, 412), writable(back + 512, 512)],
    );
    assert_eq!(read, (OK, 1025), "IN writes the data and the status byte");
    assert_eq!(guest.read(back, 1024), pattern);
    assert!(guest.line.count() >= 1, "the used ring interrupt was raised");
}

#[test]
fn header_data_and_status_may_share_descriptors() {
    let (_disk, file) = disk_file();
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, false);
    memory.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(HEADER)).expect("type");
    memory.write_obj(1u64.to_le(), GuestAddress(HEADER + 8)).expect("sector");
    // Header split 10 + 6; data and status in one writable descriptor.
    let (_, used) =
        guest.submit(&[readable(HEADER, 10), readable(HEADER + 10, 6), writable(DATA, 513)]);
    assert_eq!(used, 513);
    let expected: Vec<u8> = (512..1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(guest.read(DATA, 512), expected);
    assert_eq!(guest.read(DATA + 512, 1), vec![OK]);
}

#[test]
fn read_only_disk_refuses_writes() {
    let (disk, file) = disk_file();
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, true);
    memory.write_slice(&[0x5a; 512], GuestAddress(DATA)).expect("data");
    assert_eq!(guest.request(VIRTIO_BLK_T_OUT, 0, &[readable(DATA, 512)]), (IOERR, 1));
    let mut first = [0u8; 512];
    disk.as_file().read_exact_at(&mut first, 0).expect("read disk");
    assert_eq!(first[1], 1, "the disk is unchanged");
    assert_eq!(guest.request(VIRTIO_BLK_T_IN, 0, &[writable(DATA, 512)]).0, OK);
    assert_eq!(guest.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
}

#[test]
fn requests_beyond_the_capacity_fail() {
    let (_disk, file) = disk_file();
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, false);
    let one = [writable(DATA, 512)];
    let two = [writable(DATA, 1024)];
    assert_eq!(guest.request(VIRTIO_BLK_T_IN, 7, &one), (OK, 513), "the last sector");
    assert_eq!(guest.request(VIRTIO_BLK_T_IN, 8, &one), (IOERR, 1), "one past the end");
    assert_eq!(guest.request(VIRTIO_BLK_T_IN, 7, &two), (IOERR, 1), "runs past the end");
    assert_eq!(guest.request(VIRTIO_BLK_T_IN, u64::MAX / 256, &one), (IOERR, 1), "overflows");
    memory.write_slice(&[1; 512], GuestAddress(DATA)).expect("data");
    let out = [readable(DATA, 512)];
    assert_eq!(guest.request(VIRTIO_BLK_T_OUT, 8, &out), (IOERR, 1), "no write past the end");
    assert_eq!(guest.request(VIRTIO_BLK_T_IN, 0, &[writable(DATA, 100)]), (IOERR, 1), "partial");
}

#[test]
fn flush_succeeds() {
    let (_disk, file) = disk_file();
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, false);
    assert_eq!(guest.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
}

#[test]
fn get_id_returns_the_serial_derived_from_the_file() {
    let (disk, file) = disk_file();
    let metadata = disk.as_file().metadata().expect("stat");
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, false);
    let expected = format!("{:x}-{:x}", metadata.ino(), metadata.dev());
    assert_eq!(&guest.device.serial()[..expected.len()], expected.as_bytes());

    memory.write_slice(&[0xee; 20], GuestAddress(DATA)).expect("fill");
    assert_eq!(guest.request(VIRTIO_BLK_T_GET_ID, 0, &[writable(DATA, 20)]), (OK, 21));
    assert_eq!(guest.read(DATA, 20), guest.device.serial().to_vec());
    assert_eq!(guest.request(VIRTIO_BLK_T_GET_ID, 0, &[writable(DATA, 4)]), (OK, 5));
}

#[test]
fn unknown_request_types_are_unsupported() {
    let (_disk, file) = disk_file();
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, false);
    assert_eq!(guest.request(VIRTIO_BLK_T_DISCARD, 0, &[readable(DATA, 16)]), (UNSUPP, 1));
    assert_eq!(guest.request(0xdead, 0, &[]), (UNSUPP, 1));
}

#[test]
fn malformed_chains_are_returned_and_the_device_goes_on() {
    let (_disk, file) = disk_file();
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, false);
    memory.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(HEADER)).expect("type");
    memory.write_obj(0u64, GuestAddress(HEADER + 8)).expect("sector");

    // No writable byte for the status: returned with nothing written.
    assert_eq!(guest.submit(&[readable(HEADER, 16), readable(DATA, 512)]).1, 0);
    // A header too short to hold a request: IOERR.
    assert_eq!(guest.submit(&[readable(HEADER, 8), writable(STATUS, 1)]), (IOERR, 1));
    // Data in the wrong direction: IN into a device-readable buffer, OUT from a writable one.
    let wrong_in = [readable(HEADER, 16), readable(DATA, 512), writable(STATUS, 1)];
    assert_eq!(guest.submit(&wrong_in), (IOERR, 1));
    memory.write_obj(VIRTIO_BLK_T_OUT.to_le(), GuestAddress(HEADER)).expect("type");
    let wrong_out = [readable(HEADER, 16), writable(DATA, 512), writable(STATUS, 1)];
    assert_eq!(guest.submit(&wrong_out), (IOERR, 1));
    // A readable descriptor after a writable one.
    let bad_order =
        [readable(HEADER, 16), writable(DATA, 512), readable(DATA, 512), writable(STATUS, 1)];
    assert_eq!(guest.submit(&bad_order), (0xff, 0));
    // Data outside guest memory, and a huge length.
    assert_eq!(
        guest.submit(&[readable(HEADER, 16), writable(1 << 40, 512), writable(STATUS, 1)]),
        (0xff, 0)
    );
    assert_eq!(
        guest.submit(&[readable(HEADER, 16), writable(DATA, u32::MAX), writable(STATUS, 1)]),
        (0xff, 0)
    );
    // A head index outside the descriptor table: nothing to return, nothing to hang on.
    let before = guest.queue.used().len();
    guest.queue.post_head(999);
    assert_eq!(guest.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    assert_eq!(guest.queue.used().len(), before + 1, "only the flush came back");
    // And real I/O still works.
    assert_eq!(guest.request(VIRTIO_BLK_T_IN, 0, &[writable(DATA, 512)]), (OK, 513));
}

#[test]
fn the_interrupt_is_raised_only_when_requests_completed() {
    let (_disk, file) = disk_file();
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, false);
    guest.device.queue_notify(0);
    assert_eq!(guest.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    assert_eq!(guest.line.count(), 1, "the empty notification raised nothing");
}

#[test]
fn reset_drops_the_queue_and_a_new_activation_serves_a_new_one() {
    let (_disk, file) = disk_file();
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, file, false);
    assert_eq!(guest.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    guest.device.reset();

    let mut queue = DriverQueue::new(&memory, 0x8000, 8);
    let (interrupt, _line) = counting_interrupt();
    guest.device.ack_features(guest.device.features());
    guest.device.activate(memory.clone(), vec![queue.device_queue()], interrupt).expect("again");
    memory.write_obj(VIRTIO_BLK_T_FLUSH.to_le(), GuestAddress(HEADER)).expect("type");
    let head = queue.post(&[readable(HEADER, 16), writable(STATUS, 1)]);
    guest.device.queue_notify(0);
    assert_eq!(queue.wait_used(1), vec![(head, 1)]);
    assert_eq!(guest.queue.used().len(), 1, "the old queue saw nothing more");
}
