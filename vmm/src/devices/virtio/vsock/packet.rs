//! The virtio-vsock packet (virtio 1.2, section 5.10.6): its 44-byte little-endian header, and
//! reading packets out of tx descriptor chains and writing them into rx ones. Chains come from
//! the guest, so everything about them is checked before use and a bad one is an error value,
//! never a panic.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Writer};

use crate::memory::GuestMemory;

/// Size of `struct virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = 44;
/// The largest payload moved in one packet. Linux never sends more (its
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE), and the bound caps what a guest can make us copy at once.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// `type` of a stream socket, the only kind this device carries.
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RECEIVE: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations (`op`).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    pub socket_type: u16,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

/// Field offsets in the wire header.
mod offset {
    pub const SRC_CID: usize = 0;
    pub const DST_CID: usize = 8;
    pub const SRC_PORT: usize = 16;
    pub const DST_PORT: usize = 20;
    pub const LEN: usize = 24;
    pub const TYPE: usize = 28;
    pub const OP: usize = 30;
    pub const FLAGS: usize = 32;
    pub const BUF_ALLOC: usize = 36;
    pub const FWD_CNT: usize = 40;
}

fn field<const N: usize>(bytes: &[u8; HEADER_SIZE], at: usize) -> [u8; N] {
    let mut value = [0u8; N];
    value.copy_from_slice(&bytes[at..at + N]);
    value
}

impl Header {
    /// Decodes the wire format.
    pub fn decode(bytes: &[u8; HEADER_SIZE]) -> Header {
        Header {
            src_cid: u64::from_le_bytes(field(bytes, offset::SRC_CID)),
            dst_cid: u64::from_le_bytes(field(bytes, offset::DST_CID)),
            src_port: u32::from_le_bytes(field(bytes, offset::SRC_PORT)),
            dst_port: u32::from_le_bytes(field(bytes, offset::DST_PORT)),
            len: u32::from_le_bytes(field(bytes, offset::LEN)),
            socket_type: u16::from_le_bytes(field(bytes, offset::TYPE)),
            op: u16::from_le_bytes(field(bytes, offset::OP)),
            flags: u32::from_le_bytes(field(bytes, offset::FLAGS)),
            buf_alloc: u32::from_le_bytes(field(bytes, offset::BUF_ALLOC)),
            fwd_cnt: u32::from_le_bytes(field(bytes, offset::FWD_CNT)),
        }
    }

    /// Encodes the wire format.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut bytes = [0u8; HEADER_SIZE];
        let mut put = |at: usize, value: &[u8]| bytes[at..at + value.len()].copy_from_slice(value);
        put(offset::SRC_CID, &self.src_cid.to_le_bytes());
        put(offset::DST_CID, &self.dst_cid.to_le_bytes());
        put(offset::SRC_PORT, &self.src_port.to_le_bytes());
        put(offset::DST_PORT, &self.dst_port.to_le_bytes());
        put(offset::LEN, &self.len.to_le_bytes());
        put(offset::TYPE, &self.socket_type.to_le_bytes());
        put(offset::OP, &self.op.to_le_bytes());
        put(offset::FLAGS, &self.flags.to_le_bytes());
        put(offset::BUF_ALLOC, &self.buf_alloc.to_le_bytes());
        put(offset::FWD_CNT, &self.fwd_cnt.to_le_bytes());
        bytes
    }

    /// The RST answering this packet: addresses swapped, same socket type (the guest matches
    /// it against the socket that sent the packet).
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            socket_type: self.socket_type,
            op: op::RST,
            ..Header::default()
        }
    }
}

/// Why a descriptor chain could not be used. The chain is still returned to the guest (as used,
/// with nothing written), so a bad chain costs the guest a buffer and nothing else.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A tx chain must be device-readable only.
    #[error("tx chain has a device-writable descriptor")]
    WritableInTx,
    /// An rx chain must be device-writable only.
    #[error("rx chain has a device-readable descriptor")]
    ReadableInRx,
    /// The chain cannot even hold a header.
    #[error("chain of {0} bytes is shorter than the {HEADER_SIZE}-byte header")]
    ShortHeader(usize),
    /// The header's `len` claims more payload than the chain carries.
    #[error("header announces {announced} payload bytes but the chain holds {available}")]
    LengthBeyondChain { announced: u32, available: usize },
    /// The header's `len` is over [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(u32),
    /// A descriptor points outside guest memory, or the chain's lengths overflow.
    #[error("descriptor chain is unusable: {0}")]
    Chain(#[source] virtio_queue::Error),
    /// Copying from or to guest memory failed.
    #[error("guest memory access failed: {0}")]
    Memory(#[source] std::io::Error),
}

/// A packet the guest sent.
#[derive(Debug)]
pub struct TxPacket {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// Reads the packet in a tx chain: header, then `header.len` payload bytes.
pub fn read_tx_packet(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Result<TxPacket, ChainError> {
    // The reader would silently skip writable descriptors; a driver that mixes them in is
    // broken or hostile, and its packet is not trusted.
    if chain.clone().any(|desc| desc.is_write_only()) {
        return Err(ChainError::WritableInTx);
    }
    let mut reader = chain.reader(mem).map_err(ChainError::Chain)?;
    let available = reader.available_bytes();
    if available < HEADER_SIZE {
        return Err(ChainError::ShortHeader(available));
    }
    let mut raw = [0u8; HEADER_SIZE];
    reader.read_exact(&mut raw).map_err(ChainError::Memory)?;
    let header = Header::decode(&raw);
    let announced = header.len;
    let len = announced as usize;
    if len > MAX_PAYLOAD {
        return Err(ChainError::PayloadTooLarge(announced));
    }
    if len > available - HEADER_SIZE {
        return Err(ChainError::LengthBeyondChain {
            announced,
            available: available - HEADER_SIZE,
        });
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).map_err(ChainError::Memory)?;
    Ok(TxPacket { header, payload })
}

/// An rx chain checked to be writable and big enough for a header.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

impl<'a> RxBuffer<'a> {
    /// Checks `chain` as an rx buffer.
    pub fn new(
        mem: &'a GuestMemory,
        chain: DescriptorChain<&'a GuestMemory>,
    ) -> Result<RxBuffer<'a>, ChainError> {
        if chain.clone().any(|desc| !desc.is_write_only()) {
            return Err(ChainError::ReadableInRx);
        }
        let writer = chain.writer(mem).map_err(ChainError::Chain)?;
        let available = writer.available_bytes();
        if available < HEADER_SIZE {
            return Err(ChainError::ShortHeader(available));
        }
        Ok(RxBuffer { writer })
    }

    /// How many payload bytes fit behind the header.
    pub fn payload_capacity(&self) -> usize {
        (self.writer.available_bytes() - HEADER_SIZE).min(MAX_PAYLOAD)
    }

    /// Writes `header` (its `len` set to the payload's) and `payload`, which must fit
    /// ([`payload_capacity`](Self::payload_capacity)). Returns the bytes written, for the used
    /// ring.
    pub fn write(mut self, header: &Header, payload: &[u8]) -> Result<u32, ChainError> {
        let len =
            u32::try_from(payload.len()).map_err(|_| ChainError::PayloadTooLarge(u32::MAX))?;
        let header = Header { len, ..*header };
        self.writer.write_all(&header.encode()).map_err(ChainError::Memory)?;
        self.writer.write_all(payload).map_err(ChainError::Memory)?;
        Ok(HEADER_SIZE as u32 + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_wire_order() {
        let header = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1024,
            len: 5,
            socket_type: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x4_0000,
            fwd_cnt: 77,
        };
        let bytes = header.encode();
        assert_eq!(&bytes[0..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&bytes[28..32], &[1, 0, 5, 0], "type then op");
        assert_eq!(&bytes[40..44], &77u32.to_le_bytes());
        assert_eq!(Header::decode(&bytes), header);
    }

    #[test]
    fn reset_reply_swaps_addresses_and_keeps_the_type() {
        let request = Header {
            src_cid: 3,
            dst_cid: 7,
            src_port: 10,
            dst_port: 20,
            socket_type: 2,
            op: op::REQUEST,
            len: 9,
            buf_alloc: 1,
            ..Header::default()
        };
        let reply = request.reset_reply();
        assert_eq!((reply.src_cid, reply.dst_cid, reply.src_port, reply.dst_port), (7, 3, 20, 10));
        assert_eq!((reply.op, reply.socket_type, reply.len, reply.buf_alloc), (op::RST, 2, 0, 0));
    }
}
