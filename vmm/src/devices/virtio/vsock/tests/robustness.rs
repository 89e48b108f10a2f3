//! A guest or host client that misbehaves, timeouts, shutdowns, reset and drop.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::driver::{memory, sees_eof, Desc, Driver, GUEST_CID, MEMORY_SIZE, WAIT};
use super::pattern;
use crate::devices::virtio::vsock::muxer::Timeouts;
use crate::devices::virtio::vsock::packet::{
    op, Header, HEADER_SIZE, SHUTDOWN_RECEIVE, SHUTDOWN_SEND,
};
use crate::devices::virtio::VirtioDevice;

fn short_timeouts() -> Timeouts {
    let short = Duration::from_millis(200);
    Timeouts { connect_line: short, guest_response: short, close_flush: short }
}

#[test]
fn malformed_chains_are_dropped_and_traffic_goes_on() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    let valid = d.header(op::REQUEST, 4000, 6000);

    // A chain too short for a header.
    let at = d.tx_buffer();
    d.send_chain(&[Desc { addr: at, len: 10, write_only: false }]);
    // A good header, in a descriptor the device may only write.
    let at = d.tx_buffer();
    mem.write_slice(&valid.encode(), GuestAddress(at)).expect("write");
    d.send_chain(&[Desc { addr: at, len: HEADER_SIZE as u32, write_only: true }]);
    // A header announcing more payload than the chain holds.
    let at = d.tx_buffer();
    let long = Header { op: op::RW, len: 1000, ..valid };
    mem.write_slice(&long.encode(), GuestAddress(at)).expect("write");
    d.send_chain(&[Desc { addr: at, len: HEADER_SIZE as u32 + 10, write_only: false }]);
    // A descriptor outside guest memory.
    d.send_chain(&[Desc { addr: MEMORY_SIZE + 0x1000, len: 64, write_only: false }]);
    // A payload over the 64 KiB packet limit (two overlapping descriptors make it fit).
    let at = d.tx_buffer();
    let huge = Header { op: op::RW, len: 70_000, ..valid };
    mem.write_slice(&huge.encode(), GuestAddress(at)).expect("write");
    d.send_chain(&[
        Desc { addr: at, len: 0xf000, write_only: false },
        Desc { addr: at, len: 0xf000, write_only: false },
    ]);
    d.wait_tx_done();
    assert_eq!(d.device.dropped_packets(), 5);

    // An rx chain the device may not write is handed back empty, and the next one is used.
    d.post_readonly_rx();
    d.post_rx(4, 4096);
    let (len, packet) = d.next_rx_raw();
    assert_eq!((len, packet.is_none()), (0, true));
    assert_eq!(d.device.dropped_packets(), 6);

    // Still working: a REQUEST whose header is split over two descriptors.
    let listener = UnixListener::bind(d.port_path(6000)).expect("bind");
    let at = d.tx_buffer();
    mem.write_slice(&valid.encode(), GuestAddress(at)).expect("write");
    d.send_chain(&[
        Desc { addr: at, len: 20, write_only: false },
        Desc { addr: at + 20, len: HEADER_SIZE as u32 - 20, write_only: false },
    ]);
    let (response, _) = d.expect(op::RESPONSE);
    assert_eq!((response.src_port, response.dst_port), (6000, 4000));
    let (mut host, _) = listener.accept().expect("accept");
    host.set_read_timeout(Some(WAIT)).expect("timeout");
    d.send(d.header(op::RW, 4000, 6000), b"fine");
    let mut fine = [0u8; 4];
    host.read_exact(&mut fine).expect("read");
    assert_eq!(&fine, b"fine");
    assert_eq!(d.device.dropped_packets(), 6);
}

#[test]
fn stray_packets_are_reset_and_spoofed_ones_dropped() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    d.post_rx(8, 4096);

    d.send(d.header(op::RW, 4000, 9999), b"x");
    let (reset, _) = d.expect(op::RST);
    assert_eq!((reset.src_port, reset.dst_port), (9999, 4000), "no such connection");

    d.send(Header { dst_cid: 7, ..d.header(op::REQUEST, 4001, 80) }, &[]);
    let (reset, _) = d.recv();
    assert_eq!((reset.op, reset.src_cid, reset.dst_cid), (op::RST, 7, GUEST_CID), "not the host");

    d.send(Header { socket_type: 2, ..d.header(op::REQUEST, 4002, 80) }, &[]);
    let (reset, _) = d.expect(op::RST);
    assert_eq!((reset.socket_type, reset.src_port), (2, 80), "seqpacket is not offered");

    // Neither a reset for nothing nor a packet from a foreign CID is answered; the RST
    // answering the packet after them comes next.
    d.send(d.header(op::RST, 4003, 9999), &[]);
    d.send(Header { src_cid: 9, ..d.header(op::REQUEST, 4004, 80) }, &[]);
    d.send(d.header(op::CREDIT_REQUEST, 4005, 9999), &[]);
    let (reset, _) = d.expect(op::RST);
    assert_eq!(reset.dst_port, 4005);
    assert_eq!(d.device.dropped_packets(), 1, "the spoofed packet is counted");
}

#[test]
fn guest_ignoring_our_credit_is_reset() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    // The client never reads: its socket fills, then the device's buffer, then the guest is
    // beyond the credit it was given.
    let (mut client, port) = d.establish(1234, 4096);
    for i in 0..16 {
        d.send(d.header(op::RW, 1234, port), &pattern(60_000, i));
    }
    d.post_rx(8, 4096);
    loop {
        let (header, _) = d.recv();
        match header.op {
            op::CREDIT_UPDATE => continue,
            op::RST => break,
            other => panic!("unexpected op {other}"),
        }
    }
    assert!(sees_eof(&mut client), "the host end is closed with the connection");
}

#[test]
fn malformed_connect_line_closes_only_that_client() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    let (mut good, _) = d.establish(1234, 4096);
    for garbage in [&b"HELLO 12\n"[..], b"CONNECT x\n", &[b'7'; 64]] {
        let mut bad = UnixStream::connect(d.uds()).expect("connect");
        bad.set_read_timeout(Some(WAIT)).expect("timeout");
        bad.write_all(garbage).expect("write");
        assert!(sees_eof(&mut bad), "{:?}", String::from_utf8_lossy(garbage));
    }
    good.write_all(b"still here").expect("write");
    d.post_rx(2, 4096);
    let (_, payload) = d.expect(op::RW);
    assert_eq!(payload, b"still here");
}

#[test]
fn silent_clients_and_unanswered_requests_time_out() {
    let mem = memory();
    let mut d = Driver::with_timeouts(&mem, short_timeouts());
    d.activate();
    let mut silent = UnixStream::connect(d.uds()).expect("connect");
    silent.set_read_timeout(Some(WAIT)).expect("timeout");
    assert!(sees_eof(&mut silent), "no CONNECT line in time");

    d.post_rx(2, 4096);
    let mut client = d.host_connect(1234);
    let (request, _) = d.expect(op::REQUEST);
    assert!(sees_eof(&mut client), "the guest never answered");
    let (reset, _) = d.expect(op::RST);
    assert_eq!((reset.src_port, reset.dst_port), (request.src_port, 1234));
}

#[test]
fn client_gone_before_the_response_costs_the_guest_a_reset_only() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    d.post_rx(2, 4096);
    let client = d.host_connect(1234);
    let (request, _) = d.expect(op::REQUEST);
    drop(client);
    // The answer to a CONNECT whose client left must not hurt the device (it brings down
    // vhost-device-vsock 0.3, which is why hybrid_vsock::connect never gives up on one).
    d.send(d.header(op::RESPONSE, 1234, request.src_port), &[]);
    let (reset, _) = d.expect(op::RST);
    assert_eq!((reset.src_port, reset.dst_port), (request.src_port, 1234));
    let (_client, _) = d.establish(1234, 4096);
}

#[test]
fn host_half_close_and_guest_shutdown_end_the_stream() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    let (mut client, port) = d.establish(1234, 4096);
    d.post_rx(4, 4096);
    client.shutdown(Shutdown::Write).expect("half-close");
    let (shutdown, _) = d.expect(op::SHUTDOWN);
    assert_eq!(shutdown.flags, SHUTDOWN_SEND, "the host sends no more");

    // The other direction still flows.
    d.send(d.header(op::RW, 1234, port), b"bye");
    let mut bye = [0u8; 3];
    client.read_exact(&mut bye).expect("read");
    assert_eq!(&bye, b"bye");

    let both =
        Header { flags: SHUTDOWN_SEND | SHUTDOWN_RECEIVE, ..d.header(op::SHUTDOWN, 1234, port) };
    d.send(both, &[]);
    let (reset, _) = d.expect(op::RST);
    assert_eq!((reset.src_port, reset.dst_port), (port, 1234));
    assert!(sees_eof(&mut client));
}

#[test]
fn guest_half_close_then_host_close_resets() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    d.post_rx(4, 4096);
    let (_listener, mut host) = d.guest_connect(4000, 7000);

    d.send(d.header(op::RW, 4000, 7000), b"last words");
    d.send(Header { flags: SHUTDOWN_SEND, ..d.header(op::SHUTDOWN, 4000, 7000) }, &[]);
    let mut all = Vec::new();
    host.read_to_end(&mut all).expect("read to EOF");
    assert_eq!(all, b"last words", "the guest's half-close reaches the host as EOF");

    host.write_all(b"reply").expect("write");
    let (_, payload) = d.expect(op::RW);
    assert_eq!(payload, b"reply");
    drop(host);
    let (reset, _) = d.expect(op::RST);
    assert_eq!((reset.src_port, reset.dst_port), (7000, 4000), "both sides done");
}

#[test]
fn clients_are_turned_away_until_activation() {
    let mem = memory();
    let mut d = Driver::new(&mem);
    let mut early = d.host_connect(1234);
    assert!(sees_eof(&mut early), "no driver yet to answer");
    d.queue_notify_all();
    d.activate();
    let (_client, _) = d.establish(1234, 4096);
}

#[test]
fn reset_drops_connections_and_drop_removes_the_socket() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    let (mut client, _) = d.establish(1234, 4096);
    d.device.reset();
    assert!(sees_eof(&mut client), "connections go with the reset");
    let mut late = d.host_connect(1234);
    assert!(sees_eof(&mut late), "inactive again");
    d.device.queue_notify(1);

    let uds = d.uds();
    assert!(uds.exists());
    drop(d);
    assert!(!uds.exists());
}
