//! The device driven as a guest driver would drive it (queues in guest memory) with real Unix
//! sockets on the host side: connections both ways, data, credit, identity. Misbehaviour and
//! teardown are in `robustness.rs`.

mod driver;
mod robustness;

use std::io::{Read, Write};

use self::driver::{memory, read_line, sees_eof, Driver};
use super::connection::{BUF_ALLOC, CREDIT_UPDATE_THRESHOLD};
use super::packet::{op, Header, TYPE_STREAM};
use super::{Error, Vsock, DEVICE_TYPE, NUM_QUEUES};
use crate::devices::virtio::VirtioDevice;

/// `count` bytes of a pattern that shows misordering or loss.
fn pattern(count: usize, seed: u8) -> Vec<u8> {
    (0..count).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn host_connect_relays_both_ways() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    d.post_rx(8, 4096);
    let mut client = d.host_connect(1234);

    let (request, payload) = d.expect(op::REQUEST);
    assert!(payload.is_empty());
    assert_eq!(
        (request.dst_port, request.socket_type, request.buf_alloc),
        (1234, TYPE_STREAM, BUF_ALLOC)
    );
    assert!(request.src_port >= 1 << 30, "host ports are allocated from 2^30");
    assert!(d.line.count() > 0, "the used rx buffer was signalled");

    let response =
        Header { buf_alloc: 64 * 1024, ..d.header(op::RESPONSE, 1234, request.src_port) };
    d.send(response, &[]);
    assert_eq!(read_line(&mut client), format!("OK {}", request.src_port));

    client.write_all(b"hello, guest").expect("write");
    let mut received = Vec::new();
    while received.len() < 12 {
        let (header, payload) = d.expect(op::RW);
        assert_eq!((header.src_port, header.dst_port), (request.src_port, 1234));
        assert_eq!(header.len as usize, payload.len());
        received.extend(payload);
    }
    assert_eq!(received, b"hello, guest");

    d.send(d.header(op::RW, 1234, request.src_port), b"hello, host");
    let mut reply = [0u8; 11];
    client.read_exact(&mut reply).expect("read");
    assert_eq!(&reply, b"hello, host");

    // A second client to the same guest port gets its own host port.
    let _second = d.host_connect(1234);
    let (second, _) = d.expect(op::REQUEST);
    assert_eq!(second.dst_port, 1234);
    assert_ne!(second.src_port, request.src_port);
}

#[test]
fn guest_reset_answering_request_closes_the_client_which_may_retry() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    d.post_rx(1, 4096);
    let mut client = d.host_connect(1234);
    let (request, _) = d.expect(op::REQUEST);
    d.send(d.header(op::RST, 1234, request.src_port), &[]);
    assert!(sees_eof(&mut client), "nobody listens in the guest: the client is closed");

    // What hybrid_vsock::connect does next: try again, and this time the guest listens.
    let (_client, port) = d.establish(1234, 4096);
    assert_ne!(port, request.src_port);
}

#[test]
fn guest_connect_reaches_the_port_socket_or_gets_reset() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    d.post_rx(4, 4096);
    // Checks the RESPONSE's ports and credit, and that the listener got the connection.
    let (_listener, mut host) = d.guest_connect(4000, 5000);

    d.send(d.header(op::RW, 4000, 5000), b"ping");
    let mut ping = [0u8; 4];
    host.read_exact(&mut ping).expect("read");
    assert_eq!(&ping, b"ping");
    host.write_all(b"pong").expect("write");
    let (header, payload) = d.expect(op::RW);
    assert_eq!((header.src_port, header.dst_port, payload.as_slice()), (5000, 4000, &b"pong"[..]));
    assert_eq!(header.fwd_cnt, 4, "the 4 bytes forwarded to the host are credited");

    d.send(d.header(op::REQUEST, 4001, 5001), &[]);
    let (reset, _) = d.expect(op::RST);
    assert_eq!((reset.src_port, reset.dst_port), (5001, 4001), "nobody at <uds>_5001");
}

#[test]
fn host_data_waits_for_guest_credit() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    let (mut client, port) = d.establish(1234, 100);
    let data = pattern(300, 0x5a);
    client.write_all(&data).expect("write");
    d.post_rx(16, 4096);

    let mut received = Vec::new();
    for (buf_alloc, fwd_cnt) in [(100, 0), (100, 100), (1000, 200)] {
        if fwd_cnt > 0 {
            let update = Header { buf_alloc, fwd_cnt, ..d.header(op::CREDIT_UPDATE, 1234, port) };
            d.send(update, &[]);
        }
        let window_end = (fwd_cnt + buf_alloc).min(300) as usize;
        while received.len() < window_end {
            let (_, payload) = d.expect(op::RW);
            received.extend(payload);
        }
        assert_eq!(received.len(), window_end, "no byte beyond the guest's window");
        // A CREDIT_REQUEST is answered after whatever data the device could send now, so
        // seeing the CREDIT_UPDATE first shows that nothing beyond the window was sendable.
        let request = Header { buf_alloc, fwd_cnt, ..d.header(op::CREDIT_REQUEST, 1234, port) };
        d.send(request, &[]);
        let (update, _) = d.expect(op::CREDIT_UPDATE);
        assert_eq!((update.buf_alloc, update.fwd_cnt), (BUF_ALLOC, 0));
    }
    assert_eq!(received, data);
}

#[test]
fn forwarding_guest_data_returns_credit_unprompted() {
    let mem = memory();
    let mut d = Driver::active(&mem);
    let (mut client, port) = d.establish(1234, 4096);
    let chunks: Vec<Vec<u8>> = (0..3).map(|i| pattern(60_000, i)).collect();
    let expected: Vec<u8> = chunks.concat();
    // The client is handed back, not dropped: its EOF would end the stream with a SHUTDOWN,
    // whose header would carry the credit instead of a CREDIT_UPDATE.
    let reader = std::thread::spawn(move || {
        let mut all = vec![0u8; 180_000];
        client.read_exact(&mut all).map(|_| (all, client))
    });
    for chunk in &chunks {
        d.send(d.header(op::RW, 1234, port), chunk);
    }
    d.post_rx(1, 4096);
    let (update, _) = d.expect(op::CREDIT_UPDATE);
    assert_eq!(update.buf_alloc, BUF_ALLOC);
    assert!(update.fwd_cnt >= CREDIT_UPDATE_THRESHOLD, "fwd_cnt {}", update.fwd_cnt);
    let (received, _client) = reader.join().expect("reader").expect("read");
    assert_eq!(received, expected);
}

#[test]
fn identity_config_space_and_queues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v.sock");
    let device = Vsock::new(0x1234_5678, path.clone()).expect("device");
    assert!(path.exists(), "the socket is bound by new()");
    assert_eq!(device.device_type(), DEVICE_TYPE);
    assert_eq!(DEVICE_TYPE, 19);
    assert_eq!(device.queue_max_sizes().len(), NUM_QUEUES);
    assert_eq!(NUM_QUEUES, 3);
    assert_eq!(device.features(), 0, "the transport adds VERSION_1, nothing else is offered");
    assert_eq!(device.queue_events().len(), 3);

    let mut config = [0xffu8; 8];
    device.read_config(0, &mut config);
    assert_eq!(u64::from_le_bytes(config), 0x1234_5678);
    let mut middle = [0u8; 2];
    device.read_config(1, &mut middle);
    assert_eq!(middle, [0x56, 0x34]);
    let mut past = [0xffu8; 4];
    device.read_config(6, &mut past);
    assert_eq!(past, [0; 4], "beyond the 8-byte config space reads as zero");

    let again = Vsock::new(3, path.clone()).err().expect("socket in use");
    assert!(matches!(again, Error::Bind { .. }));
    assert!(again.to_string().contains(&path.display().to_string()), "{again}");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32] {
        let other = dir.path().join(format!("cid{cid}.sock"));
        assert!(matches!(Vsock::new(cid, other), Err(Error::InvalidCid(c)) if c == cid));
    }
    drop(device);
    assert!(!path.exists(), "the socket file goes with the device");
}
