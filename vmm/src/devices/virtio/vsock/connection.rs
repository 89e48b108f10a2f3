//! One vsock stream between a guest port and a host Unix socket: its handshake phase, what
//! each side has shut down, the bytes waiting for the host, and credit accounting in both
//! directions (virtio 1.2, 5.10.6.3):
//! - towards the guest, we send at most `buf_alloc - (tx_cnt - fwd_cnt)` bytes, with the
//!   guest's latest `buf_alloc`/`fwd_cnt`;
//! - from the guest, we hold at most [`BUF_ALLOC`] unforwarded bytes, the receive buffer every
//!   packet we send advertises, together with how much of it we forwarded (`fwd_cnt`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::host;
use super::packet::{op, Header, SHUTDOWN_RECEIVE, SHUTDOWN_SEND, TYPE_STREAM};

/// Our receive buffer per connection: guest bytes not yet written to the host socket.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Once this much was forwarded since the guest last heard our `fwd_cnt`, tell it unprompted,
/// so a guest that only sends is not left waiting for credit.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 2;

/// A connection's address: (host-side port, guest-side port). The CIDs are fixed (host 2, the
/// device's guest CID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Host-initiated: the REQUEST is out (or queued); the guest must answer by `deadline`.
    Connecting {
        deadline: Instant,
    },
    Established,
    /// No more data will flow either way, but guest bytes are still being flushed to the host,
    /// which must take them by `deadline`.
    Closing {
        deadline: Instant,
    },
}

/// What the owner must do with a connection after an event.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Next {
    Keep,
    /// Send RST to the guest and drop the connection.
    Reset,
    /// Drop the connection without a word (the guest reset it).
    Forget,
}

/// The next packet a connection has for the guest.
#[derive(Debug)]
pub enum RxItem {
    /// A packet; its CIDs are filled in by the owner.
    Packet(Header, Vec<u8>),
    Nothing,
    /// The connection failed: send RST and drop it.
    Reset,
}

/// Control packets owed to the guest.
#[derive(Debug, Default)]
struct Owed {
    request: bool,
    response: bool,
    shutdown: bool,
    credit_update: bool,
}

pub struct Connection {
    pub key: ConnKey,
    pub stream: UnixStream,
    /// The events the stream is registered for in the worker's epoll set (empty: not in it).
    pub registered: EventSet,
    phase: Phase,
    close_timeout: Duration,
    owed: Owed,
    // Towards the guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    host_readable: bool,
    host_eof: bool,
    // From the guest.
    to_host: VecDeque<u8>,
    /// Bytes at the front of `to_host` that are ours (the `OK` reply), not the guest's.
    reply_bytes: usize,
    fwd_cnt: u32,
    advertised_fwd_cnt: u32,
    /// SHUTDOWN flags the guest sent.
    guest_shut: u32,
    host_write_shut: bool,
}

impl Connection {
    fn new(key: ConnKey, stream: UnixStream, phase: Phase, close_timeout: Duration) -> Self {
        Connection {
            key,
            stream,
            registered: EventSet::empty(),
            phase,
            close_timeout,
            owed: Owed::default(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            host_readable: false,
            host_eof: false,
            to_host: VecDeque::new(),
            reply_bytes: 0,
            fwd_cnt: 0,
            advertised_fwd_cnt: 0,
            guest_shut: 0,
            host_write_shut: false,
        }
    }

    /// A host client asked for guest port `key.peer_port`: a REQUEST is owed, and the guest has
    /// until `deadline` to answer.
    pub fn host_initiated(
        key: ConnKey,
        stream: UnixStream,
        deadline: Instant,
        close_timeout: Duration,
    ) -> Self {
        let mut conn = Self::new(key, stream, Phase::Connecting { deadline }, close_timeout);
        conn.owed.request = true;
        conn
    }

    /// The guest's `request` reached a host listener on `stream`: a RESPONSE is owed.
    pub fn guest_initiated(
        key: ConnKey,
        stream: UnixStream,
        request: &Header,
        close_timeout: Duration,
    ) -> Self {
        let mut conn = Self::new(key, stream, Phase::Established, close_timeout);
        conn.note_peer_credit(request);
        conn.owed.response = true;
        conn
    }

    /// When the connection times out, if it is waiting for something.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Connecting { deadline } | Phase::Closing { deadline } => Some(deadline),
            Phase::Established => None,
        }
    }

    /// The epoll events worth waiting for now. Nothing is asked while reading would be
    /// pointless (no credit, EOF seen, not yet connected): a level-triggered registration
    /// would otherwise report the same readiness over and over.
    pub fn wanted_events(&self) -> EventSet {
        let mut events = EventSet::empty();
        if self.can_receive_from_host() && !self.host_readable && self.peer_credit() > 0 {
            events |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            events |= EventSet::OUT;
        }
        events
    }

    /// Readiness reported for the host socket.
    pub fn on_host_event(&mut self, events: EventSet) -> Next {
        let hangup = EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP;
        if events.intersects(EventSet::IN | hangup) {
            // A read tells EOF and errors apart from data.
            self.host_readable = true;
        }
        if events.intersects(EventSet::OUT | hangup) && !self.to_host.is_empty() {
            return self.flush();
        }
        Next::Keep
    }

    /// A packet the guest sent on this connection.
    pub fn on_guest_packet(&mut self, header: &Header, payload: Vec<u8>) -> Next {
        self.note_peer_credit(header);
        match header.op {
            op::RST => Next::Forget,
            op::RESPONSE => self.on_response(),
            op::RW => self.on_data(payload),
            op::SHUTDOWN => self.on_shutdown(header.flags),
            op::CREDIT_UPDATE => Next::Keep,
            op::CREDIT_REQUEST => {
                self.owed.credit_update = true;
                Next::Keep
            }
            // A second REQUEST on a live connection, or an unknown op.
            _ => Next::Reset,
        }
    }

    /// The next packet for the guest, with at most `max_payload` bytes of data. Control packets
    /// come first, then data (read from the host socket now), then a SHUTDOWN after EOF.
    pub fn next_rx_item(&mut self, max_payload: usize) -> RxItem {
        if std::mem::take(&mut self.owed.request) {
            return self.packet(op::REQUEST, 0, Vec::new());
        }
        if std::mem::take(&mut self.owed.response) {
            return self.packet(op::RESPONSE, 0, Vec::new());
        }
        if self.host_readable && self.can_receive_from_host() && max_payload > 0 {
            let want = max_payload.min(self.peer_credit() as usize);
            if want > 0 {
                match self.read_host(want) {
                    Ok(Some(data)) => {
                        self.tx_cnt = self.tx_cnt.wrapping_add(data.len() as u32);
                        return self.packet(op::RW, 0, data);
                    }
                    Ok(None) => {
                        if self.settle() == Next::Reset {
                            return RxItem::Reset;
                        }
                    }
                    Err(_) => return RxItem::Reset,
                }
            }
        }
        if std::mem::take(&mut self.owed.shutdown) {
            return self.packet(op::SHUTDOWN, SHUTDOWN_SEND, Vec::new());
        }
        if std::mem::take(&mut self.owed.credit_update) {
            return self.packet(op::CREDIT_UPDATE, 0, Vec::new());
        }
        RxItem::Nothing
    }

    /// Whether the guest may still be sent data: connected, no EOF from the host, and the
    /// guest still receiving.
    fn can_receive_from_host(&self) -> bool {
        self.phase == Phase::Established
            && !self.host_eof
            && self.guest_shut & SHUTDOWN_RECEIVE == 0
    }

    /// Free space in the guest's receive buffer, as far as we know. A guest claiming to have
    /// consumed more than it was sent gets no credit rather than a huge one.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn note_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// Reads up to `max` bytes from the host: `Some(data)`, or `None` when there is nothing
    /// now (EOF is recorded and a SHUTDOWN owed).
    fn read_host(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut data = vec![0u8; max];
        loop {
            match self.stream.read(&mut data) {
                Ok(0) => {
                    self.host_readable = false;
                    self.host_eof = true;
                    self.owed.shutdown = true;
                    return Ok(None);
                }
                Ok(n) => {
                    data.truncate(n);
                    return Ok(Some(data));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return Ok(None);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// A packet from us (the host end) to the guest, carrying our credit.
    fn packet(&mut self, op: u16, flags: u32, payload: Vec<u8>) -> RxItem {
        // Every header tells the guest our fwd_cnt, so no separate update is owed any more.
        self.advertised_fwd_cnt = self.fwd_cnt;
        self.owed.credit_update = false;
        let header = Header {
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: payload.len() as u32,
            socket_type: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
            ..Header::default()
        };
        RxItem::Packet(header, payload)
    }

    fn on_response(&mut self) -> Next {
        if !matches!(self.phase, Phase::Connecting { .. }) {
            return Next::Reset;
        }
        self.phase = Phase::Established;
        let reply = host::ok_reply(self.key.local_port);
        self.reply_bytes = reply.len();
        self.to_host.extend(reply);
        self.flush()
    }

    fn on_data(&mut self, payload: Vec<u8>) -> Next {
        if self.phase != Phase::Established || self.guest_shut & SHUTDOWN_SEND != 0 {
            return Next::Reset;
        }
        // The guest may not send beyond the buffer we advertised; one that does is reset
        // rather than buffered without bound.
        if self.guest_bytes_held() + payload.len() > BUF_ALLOC as usize {
            return Next::Reset;
        }
        self.to_host.extend(payload);
        self.flush()
    }

    fn on_shutdown(&mut self, flags: u32) -> Next {
        if matches!(self.phase, Phase::Connecting { .. }) {
            return Next::Reset;
        }
        self.guest_shut |= flags & (SHUTDOWN_RECEIVE | SHUTDOWN_SEND);
        self.flush()
    }

    fn guest_bytes_held(&self) -> usize {
        self.to_host.len() - self.reply_bytes
    }

    /// Writes what it can of `to_host`, then half-closes the host socket once the guest sent
    /// all it will, and settles whether the connection is over.
    fn flush(&mut self) -> Next {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Next::Reset,
                Ok(n) => self.forwarded(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // The host end is gone (EPIPE, ECONNRESET).
                Err(_) => return Next::Reset,
            }
        }
        if self.to_host.is_empty() && self.guest_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut
        {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.settle()
    }

    /// Resets a connection that is over; gives one whose data flow is over (EOF from the host
    /// and SHUTDOWN from the guest) a deadline to hand its last bytes to the host.
    fn settle(&mut self) -> Next {
        if self.finished() {
            return Next::Reset;
        }
        if self.nothing_more_flows() && self.phase == Phase::Established {
            self.phase = Phase::Closing { deadline: Instant::now() + self.close_timeout };
        }
        Next::Keep
    }

    /// `n` bytes from the front of `to_host` reached the host.
    fn forwarded(&mut self, n: usize) {
        self.to_host.drain(..n);
        let ours = n.min(self.reply_bytes);
        self.reply_bytes -= ours;
        self.fwd_cnt = self.fwd_cnt.wrapping_add((n - ours) as u32);
        if self.fwd_cnt.wrapping_sub(self.advertised_fwd_cnt) >= CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
    }

    /// No data can flow either way any more: the host sent EOF or the guest stopped receiving,
    /// and the guest stopped sending.
    fn nothing_more_flows(&self) -> bool {
        let host_to_guest_done = self.host_eof || self.guest_shut & SHUTDOWN_RECEIVE != 0;
        let guest_to_host_done = self.guest_shut & SHUTDOWN_SEND != 0;
        self.phase != Phase::Established || (host_to_guest_done && guest_to_host_done)
    }

    /// Over for good: nothing more flows and the host has every guest byte. The RST that
    /// follows is the clean end of a stream (5.10.6.5).
    fn finished(&self) -> bool {
        !matches!(self.phase, Phase::Connecting { .. })
            && self.nothing_more_flows()
            && self.to_host.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: ConnKey = ConnKey { local_port: 1 << 30, peer_port: 1024 };

    fn established(buf_alloc: u32) -> (Connection, UnixStream) {
        let (host, device) = UnixStream::pair().expect("pair");
        device.set_nonblocking(true).expect("nonblocking");
        let request = Header { buf_alloc, ..Header::default() };
        let mut conn = Connection::guest_initiated(KEY, device, &request, Duration::from_secs(5));
        assert!(matches!(conn.next_rx_item(4096), RxItem::Packet(h, _) if h.op == op::RESPONSE));
        (conn, host)
    }

    fn rw(len: usize) -> (Header, Vec<u8>) {
        (Header { op: op::RW, len: len as u32, ..Header::default() }, vec![7u8; len])
    }

    #[test]
    fn data_to_the_guest_is_bounded_by_its_credit() {
        let (mut conn, mut host) = established(10);
        host.write_all(&[1u8; 25]).expect("write");
        assert!(conn.on_host_event(EventSet::IN) == Next::Keep);
        let RxItem::Packet(header, data) = conn.next_rx_item(4096) else { panic!("data") };
        assert_eq!((header.op, data.len()), (op::RW, 10));
        assert!(matches!(conn.next_rx_item(4096), RxItem::Nothing), "no credit left");
        assert!(conn.wanted_events().is_empty(), "no point in polling without credit");
        let update = Header { op: op::CREDIT_UPDATE, buf_alloc: 10, fwd_cnt: 10, ..rw(0).0 };
        assert_eq!(conn.on_guest_packet(&update, Vec::new()), Next::Keep);
        let RxItem::Packet(_, data) = conn.next_rx_item(4) else { panic!("data") };
        assert_eq!(data.len(), 4, "limited by the rx buffer");
    }

    #[test]
    fn guest_data_over_our_buffer_resets() {
        let (mut conn, _host) = established(0);
        let mut sent = 0;
        // The host never reads: the socket buffer fills, then ours, then the guest is over.
        loop {
            let (header, payload) = rw(60_000);
            match conn.on_guest_packet(&header, payload) {
                Next::Keep => sent += 60_000,
                next => {
                    assert_eq!(next, Next::Reset);
                    break;
                }
            }
            assert!(sent < 8 << 20, "never reset");
        }
        assert!(conn.guest_bytes_held() <= BUF_ALLOC as usize);
    }

    #[test]
    fn forwarding_half_the_window_owes_a_credit_update() {
        let (mut conn, mut host) = established(0);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            host.read_to_end(&mut all).map(|_| all.len())
        });
        for _ in 0..3 {
            let (header, payload) = rw(50_000);
            assert_eq!(conn.on_guest_packet(&header, payload), Next::Keep);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.fwd_cnt < CREDIT_UPDATE_THRESHOLD {
            assert!(Instant::now() < deadline, "host never took the bytes");
            assert_eq!(conn.on_host_event(EventSet::OUT), Next::Keep);
            std::thread::yield_now();
        }
        let RxItem::Packet(update, _) = conn.next_rx_item(0) else { panic!("update owed") };
        assert_eq!(update.op, op::CREDIT_UPDATE);
        assert!(update.fwd_cnt >= CREDIT_UPDATE_THRESHOLD);
        let shutdown =
            Header { op: op::SHUTDOWN, flags: SHUTDOWN_SEND | SHUTDOWN_RECEIVE, ..update };
        let mut next = conn.on_guest_packet(&shutdown, Vec::new());
        while next == Next::Keep {
            assert!(Instant::now() < deadline, "never flushed");
            next = conn.on_host_event(EventSet::OUT);
        }
        assert_eq!(next, Next::Reset, "both directions shut, everything forwarded");
        drop(conn);
        assert_eq!(reader.join().expect("reader").expect("read"), 150_000);
    }

    #[test]
    fn host_eof_owes_shutdown_and_then_both_shut_resets() {
        let (mut conn, host) = established(100);
        host.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(conn.on_host_event(EventSet::IN), Next::Keep);
        let RxItem::Packet(header, _) = conn.next_rx_item(4096) else { panic!("shutdown") };
        assert_eq!((header.op, header.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
        let shutdown = Header { op: op::SHUTDOWN, flags: SHUTDOWN_SEND, ..Header::default() };
        assert_eq!(conn.on_guest_packet(&shutdown, Vec::new()), Next::Reset);
    }

    #[test]
    fn host_initiated_waits_for_response_and_sends_ok_first() {
        let (host, device) = UnixStream::pair().expect("pair");
        device.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut conn = Connection::host_initiated(KEY, device, deadline, Duration::from_secs(5));
        assert_eq!(conn.deadline(), Some(deadline));
        let RxItem::Packet(request, _) = conn.next_rx_item(0) else { panic!("request") };
        assert_eq!((request.op, request.src_port, request.dst_port), (op::REQUEST, 1 << 30, 1024));
        let (data, payload) = rw(3);
        assert_eq!(conn.on_guest_packet(&data, payload), Next::Reset, "data before RESPONSE");

        drop(host);

        let (mut host, device) = UnixStream::pair().expect("pair");
        device.set_nonblocking(true).expect("nonblocking");
        let mut conn = Connection::host_initiated(KEY, device, deadline, Duration::from_secs(5));
        assert!(matches!(conn.next_rx_item(0), RxItem::Packet(h, _) if h.op == op::REQUEST));
        let response = Header { op: op::RESPONSE, buf_alloc: 64, ..Header::default() };
        assert_eq!(conn.on_guest_packet(&response, Vec::new()), Next::Keep);
        assert_eq!(conn.deadline(), None);
        let (data, payload) = rw(3);
        assert_eq!(conn.on_guest_packet(&data, payload), Next::Keep);
        assert_eq!(conn.fwd_cnt, 3, "the OK line is not guest data");
        host.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut received = [0u8; 17];
        host.read_exact(&mut received).expect("read");
        assert_eq!(&received, b"OK 1073741824\n\x07\x07\x07");
    }
}
