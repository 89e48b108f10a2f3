//! virtio-net with the test as the guest driver on one side and as the host network on the
//! other.
//!
//! The device's I/O path only needs datagram semantics from its descriptor (one read or write,
//! one frame), so the stand-in for the tap is a `socketpair(AF_UNIX, SOCK_SEQPACKET)`: the
//! device gets one end, the test sends and receives frames on the other. Offloads are recorded
//! instead of set (a socket has no TUNSETOFFLOAD). The tap ioctls themselves are tested on a
//! real, non-persistent tap at the end.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_net::*;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{
    counting_interrupt, guest_memory, readable, wait_for, writable, Buf, CountingLine, DriverQueue,
    TIMEOUT,
};
use crate::devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemory;

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
const RX_BUFFERS: u64 = 0x10_0000;
const TX_BUFFERS: u64 = 0x80_0000;
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

/// A connected SOCK_SEQPACKET pair: (the device's end, the host network's end).
fn seqpacket_pair() -> (OwnedFd, UnixDatagram) {
    let mut fds = [0; 2];
    let kind = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair writes two descriptors into `fds`, which has room for both.
    let ret = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
    assert_eq!(ret, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just created and nothing else owns them.
    let (device, host) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // UnixDatagram only for send/recv/timeouts, which work alike on a seqpacket socket.
    let host = UnixDatagram::from(host);
    host.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    (device, host)
}

/// A frame as it crosses the tap: a zero virtio-net header, then `len` payload bytes.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame = vec![0u8; header::VNET_HDR_LEN];
    frame.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
    frame
}

/// `frame` with `num_buffers` set, as the guest should find it.
fn as_received(mut frame: Vec<u8>, num_buffers: u16) -> Vec<u8> {
    frame[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    frame
}

struct Guest<'m> {
    memory: &'m GuestMemory,
    device: Net,
    rx: DriverQueue<'m>,
    tx: DriverQueue<'m>,
    line: Arc<CountingLine>,
    offloads: Arc<Mutex<Vec<u32>>>,
    host: UnixDatagram,
}

impl<'m> Guest<'m> {
    /// A device activated by a driver that accepted `features` (plus VERSION_1).
    fn start(memory: &'m GuestMemory, features: u64) -> Self {
        let (device_end, host) = seqpacket_pair();
        let offloads = Arc::new(Mutex::new(Vec::new()));
        let record = offloads.clone();
        let set_offload: OffloadControl = Box::new(move |_, flags| {
            record.lock().expect("offload record").push(flags);
            Ok(())
        });
        let device = Net::with_offload_control(device_end, MAC, set_offload).expect("net");
        let (interrupt, line) = counting_interrupt();
        let mut guest = Guest {
            memory,
            device,
            rx: DriverQueue::new(memory, 0x1_0000, 16),
            tx: DriverQueue::new(memory, 0x2_0000, 16),
            line,
            offloads,
            host,
        };
        guest.device.ack_features(features | VIRTIO_F_VERSION_1);
        let queues = vec![guest.rx.device_queue(), guest.tx.device_queue()];
        guest.device.activate(memory.clone(), queues, interrupt).expect("activate");
        guest
    }

    /// Posts a chain on the rx queue and notifies.
    fn post_rx(&mut self, buffers: &[Buf]) -> u16 {
        let head = self.rx.post(buffers);
        self.device.queue_notify(RX_QUEUE);
        head
    }

    /// Posts `frame` as a tx chain cut into the given lengths (the rest in a last buffer),
    /// notifies, and returns the head.
    fn send(&mut self, frame: &[u8], cuts: &[usize]) -> u16 {
        self.memory.write_slice(frame, GuestAddress(TX_BUFFERS)).expect("tx data");
        let mut chain = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&frame.len())) {
            chain.push(readable(TX_BUFFERS + start as u64, (end - start) as u32));
            start = end;
        }
        let head = self.tx.post(&chain);
        self.device.queue_notify(TX_QUEUE);
        head
    }

    fn host_receive(&self) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_FRAME_LEN + 100];
        let len = self.host.recv(&mut buf).expect("a frame on the tap within the timeout");
        buf.truncate(len);
        buf
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.memory.read_slice(&mut bytes, GuestAddress(addr)).expect("guest memory");
        bytes
    }
}

#[test]
fn features_and_config_space() {
    let (device_end, _host) = seqpacket_pair();
    let device = Net::with_offload_control(device_end, MAC, Box::new(|_, _| Ok(()))).expect("net");
    assert_eq!(device.device_type(), 1);
    assert_eq!(device.queue_max_sizes(), &[256, 256], "rx and tx, no control queue");
    let offered = device.features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_ne!(offered & 1 << bit, 0, "feature bit {bit} offered");
    }
    assert_eq!(offered.count_ones(), 9, "nothing else: {offered:#x}");
    let mut config = [0xaau8; 10];
    device.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(&config[6..8], &1u16.to_le_bytes(), "link up");
    assert_eq!(&config[8..], &[0, 0]);
    assert_eq!(device.mac(), MAC);
    assert_eq!(device.queue_events().len(), 2);
}

#[test]
fn tap_offloads_follow_the_features_the_driver_accepted() {
    let csum = 1 << VIRTIO_NET_F_GUEST_CSUM;
    let (tso4, tso6) = (1 << VIRTIO_NET_F_GUEST_TSO4, 1 << VIRTIO_NET_F_GUEST_TSO6);
    assert_eq!(tap_offload(0), 0);
    assert_eq!(tap_offload(tso4 | tso6), 0, "TSO without checksum offload is not usable");
    assert_eq!(tap_offload(csum), libc::TUN_F_CSUM);
    assert_eq!(
        tap_offload(csum | tso4 | tso6 | MRG),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );

    let memory = guest_memory();
    let mut guest = Guest::start(&memory, csum | tso4);
    assert_eq!(*guest.offloads.lock().expect("record"), vec![libc::TUN_F_CSUM | libc::TUN_F_TSO4]);
    guest.device.reset();
    guest.device.ack_features(VIRTIO_F_VERSION_1);
    let (interrupt, _) = counting_interrupt();
    let queues = vec![guest.rx.device_queue(), guest.tx.device_queue()];
    guest.device.activate(memory.clone(), queues, interrupt).expect("activate again");
    assert_eq!(guest.offloads.lock().expect("record").last(), Some(&0));
}

#[test]
fn each_tx_chain_is_one_write_to_the_tap() {
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, 0);
    let first = frame(1500, 1);
    let head = guest.send(&first, &[12, 600]);
    assert_eq!(guest.host_receive(), first, "header and payload in one datagram");
    assert_eq!(guest.tx.wait_used(1), vec![(head, 0)]);
    assert!(guest.line.count() >= 1);

    let second = frame(60, 2);
    guest.send(&second, &[]);
    assert_eq!(guest.host_receive(), second);
    guest.tx.wait_used(2);
    assert_eq!(guest.device.stats().tx_frames, 2);
}

#[test]
fn an_rx_frame_fills_one_buffer_with_num_buffers_1() {
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, 0);
    // Header and data in separate descriptors, as older drivers post them.
    let head = guest.post_rx(&[writable(RX_BUFFERS, 12), writable(RX_BUFFERS + 0x100, 2000)]);
    let sent = frame(100, 7);
    guest.host.send(&sent).expect("send");
    assert_eq!(guest.rx.wait_used(1), vec![(head, 112)]);
    let mut received = guest.read(RX_BUFFERS, 12);
    received.extend(guest.read(RX_BUFFERS + 0x100, 100));
    assert_eq!(received, as_received(sent, 1));
    assert!(guest.line.count() >= 1);
    assert_eq!(guest.device.stats().rx_frames, 1);
}

#[test]
fn mergeable_rx_buffers_split_a_large_frame() {
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, MRG);
    let heads: Vec<u16> =
        (0..4).map(|i| guest.post_rx(&[writable(RX_BUFFERS + i * 0x1000, 1000)])).collect();
    let large = frame(2500 - 12, 3);
    guest.host.send(&large).expect("send");
    let used = guest.rx.wait_used(3);
    assert_eq!(used, vec![(heads[0], 1000), (heads[1], 1000), (heads[2], 500)]);
    let mut received = guest.read(RX_BUFFERS, 1000);
    received.extend(guest.read(RX_BUFFERS + 0x1000, 1000));
    received.extend(guest.read(RX_BUFFERS + 0x2000, 500));
    assert_eq!(received, as_received(large, 3));

    let small = frame(50, 9);
    guest.host.send(&small).expect("send");
    assert_eq!(guest.rx.wait_used(4)[3], (heads[3], 62));
    assert_eq!(guest.read(RX_BUFFERS + 0x3000, 62), as_received(small, 1));
}

#[test]
fn without_rx_buffers_frames_wait_in_the_tap_and_none_is_lost() {
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, 0);
    // With no buffer posted the device holds one frame and stops reading, so the host's
    // sends back up until its socket is full.
    guest.host.set_nonblocking(true).expect("nonblocking");
    let mut sent = 0u8;
    loop {
        assert!(sent < 200, "the device kept draining the tap with no rx buffers");
        match guest.host.send(&frame(8000, sent)) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("send: {e}"),
        }
    }
    assert!(sent > 1);
    assert_eq!(guest.device.stats().rx_frames, 0);
    // One buffer at a time: every frame arrives, in order.
    for i in 0..sent {
        let head = guest.post_rx(&[writable(RX_BUFFERS, 9000)]);
        let count = u16::from(i) + 1;
        wait_for(&format!("frame {i}"), || guest.rx.used_count() >= count);
        assert_eq!(guest.rx.used_at(count - 1), (head, 8012));
        assert_eq!(guest.read(RX_BUFFERS, 8012), as_received(frame(8000, i), 1));
    }
    assert_eq!(guest.device.stats().rx_dropped, 0);
}

#[test]
fn a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, 0);
    let head = guest.post_rx(&[writable(RX_BUFFERS, 1000)]);
    guest.host.send(&frame(2000, 1)).expect("send");
    wait_for("the drop", || guest.device.stats().rx_dropped == 1);
    let fits = frame(500, 2);
    guest.host.send(&fits).expect("send");
    assert_eq!(guest.rx.wait_used(1), vec![(head, 512)]);
    assert_eq!(guest.read(RX_BUFFERS, 512), as_received(fits, 1));
}

#[test]
fn frames_with_offloads_the_driver_refused_are_dropped() {
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, 0);
    let head = guest.post_rx(&[writable(RX_BUFFERS, 4000)]);
    let mut segment = frame(3000, 1);
    segment[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    segment[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    guest.host.send(&segment).expect("send");
    wait_for("the drop", || guest.device.stats().rx_dropped == 1);
    guest.host.send(&frame(100, 2)).expect("send");
    assert_eq!(guest.rx.wait_used(1), vec![(head, 112)]);
}

#[test]
fn bad_tx_chains_are_returned_unsent() {
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, 0);
    let writable_tx = guest.tx.post(&[readable(TX_BUFFERS, 12), writable(TX_BUFFERS, 100)]);
    let short = guest.tx.post(&[readable(TX_BUFFERS, 8)]);
    let outside = guest.tx.post(&[readable(1 << 40, 100)]);
    let huge = guest.tx.post(&[readable(TX_BUFFERS, MAX_FRAME_LEN as u32 + 1)]);
    guest.tx.post_head(999);
    let good = frame(64, 5);
    let good_head = guest.send(&good, &[]);
    assert_eq!(guest.host_receive(), good, "the first frame on the tap is the good one");
    let used = guest.tx.wait_used(5);
    assert_eq!(
        used,
        vec![(writable_tx, 0), (short, 0), (outside, 0), (huge, 0), (good_head, 0)],
        "the out-of-table head cannot be returned"
    );
    assert_eq!(guest.device.stats().bad_chains, 5);
    assert_eq!(guest.device.stats().tx_frames, 1);
}

#[test]
fn bad_rx_chains_are_returned_and_the_frame_goes_to_a_good_one() {
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, MRG);
    let with_readable = guest.post_rx(&[readable(RX_BUFFERS, 100), writable(RX_BUFFERS, 100)]);
    let too_small = guest.post_rx(&[writable(RX_BUFFERS, 8)]);
    let outside = guest.post_rx(&[writable(1 << 40, 4096)]);
    assert_eq!(guest.rx.wait_used(3), vec![(with_readable, 0), (too_small, 0), (outside, 0)]);
    assert_eq!(guest.device.stats().bad_chains, 3);
    let good = guest.post_rx(&[writable(RX_BUFFERS + 0x1000, 2048)]);
    let sent = frame(200, 4);
    guest.host.send(&sent).expect("send");
    assert_eq!(guest.rx.wait_used(4)[3], (good, 212));
    assert_eq!(guest.read(RX_BUFFERS + 0x1000, 212), as_received(sent, 1));
}

#[test]
fn after_a_reset_the_worker_serves_only_the_new_queues() {
    let memory = guest_memory();
    let mut guest = Guest::start(&memory, 0);
    guest.post_rx(&[writable(RX_BUFFERS, 2048)]);
    guest.device.reset();
    // A frame arriving now must not land in the old queue's buffer.
    guest.host.send(&frame(100, 1)).expect("send");

    let mut rx = DriverQueue::new(&memory, 0x4_0000, 8);
    let tx = DriverQueue::new(&memory, 0x5_0000, 8);
    guest.device.ack_features(VIRTIO_F_VERSION_1);
    let (interrupt, _) = counting_interrupt();
    guest
        .device
        .activate(memory.clone(), vec![rx.device_queue(), tx.device_queue()], interrupt)
        .expect("activate again");
    let head = rx.post(&[writable(RX_BUFFERS + 0x1_0000, 2048)]);
    guest.device.queue_notify(RX_QUEUE);
    assert_eq!(rx.wait_used(1), vec![(head, 112)]);
    assert!(guest.rx.used().is_empty(), "the old queue got nothing");
}

#[test]
fn tap_ioctls_on_a_real_tap() {
    if !std::path::Path::new(tap::test_tap::TUN_DEVICE).exists() {
        bazaar_tests::skip::skip("tap_ioctls_on_a_real_tap", "/dev/net/tun is missing");
        return;
    }
    let tap = tap::test_tap::open().expect("open a tap (needs CAP_NET_ADMIN)");
    let probe = tap.try_clone().expect("dup");
    tap::set_vnet_hdr_size(probe.as_fd(), 10).expect("TUNSETVNETHDRSZ");
    assert_eq!(tap::test_tap::vnet_hdr_size(probe.as_fd()).expect("get"), 10);
    let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    tap::set_offload(probe.as_fd(), all).expect("TUNSETOFFLOAD");
    tap::set_offload(probe.as_fd(), 0).expect("TUNSETOFFLOAD none");
    let refused = tap::set_offload(probe.as_fd(), 1 << 30).expect_err("unknown offload bit");
    assert_eq!(refused.raw_os_error(), Some(libc::EINVAL));

    // The device sets the header size itself, and its offloads on activation.
    let mut device = Net::new(tap, MAC).expect("net on a tap");
    assert_eq!(tap::test_tap::vnet_hdr_size(probe.as_fd()).expect("get"), 12);
    let memory = guest_memory();
    let rx = DriverQueue::new(&memory, 0x1_0000, 16);
    let tx = DriverQueue::new(&memory, 0x2_0000, 16);
    device.ack_features(device.features() | VIRTIO_F_VERSION_1);
    let (interrupt, _) = counting_interrupt();
    device
        .activate(memory.clone(), vec![rx.device_queue(), tx.device_queue()], interrupt)
        .expect("activation sets the offloads with TUNSETOFFLOAD");
    let not_a_tap = seqpacket_pair().0;
    assert!(matches!(Net::new(not_a_tap, MAC), Err(Error::VnetHeaderSize(_))));
}
