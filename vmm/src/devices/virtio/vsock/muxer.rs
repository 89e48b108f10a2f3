//! The connection table: routes the guest's packets to connections by address, turns host
//! clients' `CONNECT` lines into connections, picks the next packet for the guest (RSTs first,
//! then connections in turn), enforces timeouts, and keeps each socket's epoll registration in
//! line with what its connection can use.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{ConnKey, Connection, Next, RxItem};
use super::host::{self, ConnectLine, PendingConnect};
use super::packet::{op, Header, TxPacket, TYPE_STREAM};
use super::{DropCounter, HOST_CID};

/// Epoll tokens from here up are sockets of the muxer; those below are the worker's.
pub const FIRST_SOCKET_TOKEN: u64 = 16;
/// Connections (and host clients still handshaking) at most; more are refused.
const MAX_CONNECTIONS: usize = 1024;
/// RSTs waiting for an rx buffer before the guest's tx queue is left alone: a guest that sends
/// without posting rx buffers then stalls itself instead of growing this queue.
const MAX_QUEUED_RESETS: usize = 256;
/// First host-side port handed to host-initiated connections (as Firecracker does).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// How long the device waits for the other side.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For a host client to send its `CONNECT` line.
    pub connect_line: Duration,
    /// For the guest to answer a REQUEST; the client is then closed (and may retry).
    pub guest_response: Duration,
    /// For the host to take the last guest bytes once the stream is over.
    pub close_flush: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_line: Duration::from_secs(5),
            guest_response: Duration::from_secs(5),
            close_flush: Duration::from_secs(5),
        }
    }
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    timeouts: Timeouts,
    dropped: Arc<DropCounter>,
    /// Whether the guest driver is up; host clients are turned away until it is.
    active: bool,
    next_token: u64,
    pending: BTreeMap<u64, PendingConnect>,
    conns: BTreeMap<u64, Connection>,
    by_key: HashMap<ConnKey, u64>,
    resets: VecDeque<Header>,
    next_local_port: u32,
    /// The connection served last, so that the next rx buffer goes to the one after it.
    rx_cursor: u64,
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        timeouts: Timeouts,
        dropped: Arc<DropCounter>,
    ) -> Muxer {
        Muxer {
            guest_cid,
            uds_path,
            listener,
            timeouts,
            dropped,
            active: false,
            next_token: FIRST_SOCKET_TOKEN,
            pending: BTreeMap::new(),
            conns: BTreeMap::new(),
            by_key: HashMap::new(),
            resets: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rx_cursor: 0,
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Starts serving (the driver activated the device) or stops, dropping every connection
    /// and host client (the driver reset it).
    pub fn set_active(&mut self, active: bool) {
        self.active = active;
        if !active {
            self.pending.clear();
            self.conns.clear();
            self.by_key.clear();
            self.resets.clear();
        }
    }

    /// Whether the guest's tx queue should wait for rx buffers to drain queued RSTs.
    pub fn resets_backlogged(&self) -> bool {
        self.resets.len() >= MAX_QUEUED_RESETS
    }

    /// Accepts every waiting host client.
    pub fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                // WouldBlock ends the batch; any other error (EMFILE, ECONNABORTED) only
                // loses that client, and the listener stays readable if more are queued.
                Err(_) => return,
            };
            // Before activation nobody can answer: closing at once lets the client retry.
            if !self.active || self.pending.len() + self.conns.len() >= MAX_CONNECTIONS {
                continue;
            }
            let deadline = Instant::now() + self.timeouts.connect_line;
            if let Ok(pending) = PendingConnect::new(stream, deadline) {
                let token = self.new_token();
                self.pending.insert(token, pending);
            }
        }
    }

    /// Readiness of socket `token`.
    pub fn on_socket_event(&mut self, token: u64, events: EventSet) {
        if self.pending.contains_key(&token) {
            self.on_connect_line(token);
        } else if let Some(conn) = self.conns.get_mut(&token) {
            let next = conn.on_host_event(events);
            self.apply(token, next);
        }
    }

    fn on_connect_line(&mut self, token: u64) {
        let Some(pending) = self.pending.get_mut(&token) else { return };
        match pending.read_line() {
            ConnectLine::Incomplete => {}
            ConnectLine::Invalid => {
                self.pending.remove(&token);
            }
            ConnectLine::Port(peer_port) => {
                let Some(pending) = self.pending.remove(&token) else { return };
                let Some(local_port) = self.allocate_local_port() else { return };
                let key = ConnKey { local_port, peer_port };
                let deadline = Instant::now() + self.timeouts.guest_response;
                let mut conn = Connection::host_initiated(
                    key,
                    pending.stream,
                    deadline,
                    self.timeouts.close_flush,
                );
                if pending.registered {
                    conn.registered = EventSet::IN;
                }
                self.insert(token, conn);
            }
        }
    }

    /// A host-side port no live connection uses.
    fn allocate_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_key.keys().any(|key| key.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    /// A packet the guest sent.
    pub fn on_guest_packet(&mut self, packet: TxPacket) {
        let header = packet.header;
        if header.src_cid != self.guest_cid {
            // Not ours to answer: a spoofed source gets nothing back.
            self.dropped.report(
                "a tx packet",
                &format_args!(
                    "source CID {} is not the guest's {}",
                    header.src_cid, self.guest_cid
                ),
            );
            return;
        }
        if header.dst_cid != HOST_CID || header.socket_type != TYPE_STREAM {
            // Nothing here to connect to: a reset tells the guest's socket so at once.
            self.queue_reset_reply(&header);
            return;
        }
        let key = ConnKey { local_port: header.dst_port, peer_port: header.src_port };
        match self.by_key.get(&key).copied() {
            Some(token) => {
                let next = match self.conns.get_mut(&token) {
                    Some(conn) => conn.on_guest_packet(&header, packet.payload),
                    None => Next::Forget,
                };
                self.apply(token, next);
            }
            None if header.op == op::REQUEST => self.connect_to_host(&header, key),
            None => self.queue_reset_reply(&header),
        }
    }

    /// The guest connects to host port `key.local_port`: forwarded to `<socket>_<port>`.
    fn connect_to_host(&mut self, request: &Header, key: ConnKey) {
        if self.pending.len() + self.conns.len() >= MAX_CONNECTIONS {
            self.queue_reset_reply(request);
            return;
        }
        match host::connect(&host::port_path(&self.uds_path, key.local_port)) {
            Ok(stream) => {
                let conn =
                    Connection::guest_initiated(key, stream, request, self.timeouts.close_flush);
                let token = self.new_token();
                self.insert(token, conn);
            }
            Err(_) => self.queue_reset_reply(request),
        }
    }

    /// The next packet for the guest, with at most `max_payload` bytes of data.
    pub fn next_rx_packet(&mut self, max_payload: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(reset) = self.resets.pop_front() {
            return Some((reset, Vec::new()));
        }
        let after = self.conns.range(self.rx_cursor + 1..).map(|(token, _)| *token);
        let order: Vec<u64> =
            after.chain(self.conns.range(..=self.rx_cursor).map(|(token, _)| *token)).collect();
        for token in order {
            let Some(conn) = self.conns.get_mut(&token) else { continue };
            match conn.next_rx_item(max_payload) {
                RxItem::Nothing => {}
                RxItem::Packet(header, payload) => {
                    self.rx_cursor = token;
                    return Some((self.sent_by_host(header), payload));
                }
                RxItem::Reset => {
                    self.remove(token);
                    return self.resets.pop_front().map(|reset| (reset, Vec::new()));
                }
            }
        }
        None
    }

    /// The packet the guest could not be given (its rx buffer failed): data was lost, so the
    /// connection it belonged to is reset.
    pub fn undelivered(&mut self, header: &Header) {
        let key = ConnKey { local_port: header.src_port, peer_port: header.dst_port };
        if let Some(token) = self.by_key.get(&key).copied() {
            self.apply(token, Next::Reset);
        }
    }

    /// The earliest timeout pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.values().map(|pending| pending.deadline);
        pending.chain(self.conns.values().filter_map(Connection::deadline)).min()
    }

    /// Closes host clients and resets connections whose time is up.
    pub fn expire(&mut self, now: Instant) {
        self.pending.retain(|_, pending| pending.deadline > now);
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.deadline().is_some_and(|deadline| deadline <= now))
            .map(|(token, _)| *token)
            .collect();
        for token in expired {
            self.apply(token, Next::Reset);
        }
    }

    /// Brings every socket's epoll registration in line with what it can use now. A socket
    /// that cannot be registered loses its client or connection, not the device.
    pub fn sync_interests(&mut self, epoll: &Epoll) {
        let mut failed_pending = Vec::new();
        for (token, pending) in self.pending.iter_mut().filter(|(_, p)| !p.registered) {
            let fd = pending.stream.as_raw_fd();
            match epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, *token)) {
                Ok(()) => pending.registered = true,
                Err(_) => failed_pending.push(*token),
            }
        }
        for token in failed_pending {
            self.pending.remove(&token);
        }
        let mut failed = Vec::new();
        for (token, conn) in self.conns.iter_mut() {
            let wanted = conn.wanted_events();
            if wanted == conn.registered {
                continue;
            }
            let operation = if conn.registered.is_empty() {
                ControlOperation::Add
            } else if wanted.is_empty() {
                // Out of the set entirely: even an empty registration reports hangups, again
                // and again while level-triggered.
                ControlOperation::Delete
            } else {
                ControlOperation::Modify
            };
            let fd = conn.stream.as_raw_fd();
            match epoll.ctl(operation, fd, EpollEvent::new(wanted, *token)) {
                Ok(()) => conn.registered = wanted,
                Err(_) => failed.push(*token),
            }
        }
        for token in failed {
            self.apply(token, Next::Reset);
        }
    }

    fn new_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn insert(&mut self, token: u64, conn: Connection) {
        self.by_key.insert(conn.key, token);
        self.conns.insert(token, conn);
    }

    fn apply(&mut self, token: u64, next: Next) {
        match next {
            Next::Keep => {}
            Next::Reset => self.remove(token),
            Next::Forget => {
                if let Some(conn) = self.conns.remove(&token) {
                    self.by_key.remove(&conn.key);
                }
            }
        }
    }

    /// Drops connection `token` (closing its host socket) and queues its RST.
    fn remove(&mut self, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            self.by_key.remove(&conn.key);
            let reset = Header {
                src_port: conn.key.local_port,
                dst_port: conn.key.peer_port,
                socket_type: TYPE_STREAM,
                op: op::RST,
                ..Header::default()
            };
            let reset = self.sent_by_host(reset);
            self.resets.push_back(reset);
        }
    }

    fn queue_reset_reply(&mut self, header: &Header) {
        // A reset is never answered, or two ends could bounce resets forever.
        if header.op != op::RST {
            self.resets.push_back(header.reset_reply());
        }
    }

    /// `header` as sent by the host end.
    fn sent_by_host(&self, header: Header) -> Header {
        Header { src_cid: HOST_CID, dst_cid: self.guest_cid, ..header }
    }
}
