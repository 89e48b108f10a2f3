//! A descriptor chain read once into two plain buffer lists: what the device may read, then
//! what it may write. Devices then address the chain as two byte streams (virtio 1.x lets the
//! driver split headers and data across descriptors any way it likes), and every guest address
//! is checked against guest memory once, here.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemory;

/// Why a chain was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChainError {
    /// The head index led to no descriptor (out of the table, or an unreadable table).
    #[error("the chain has no descriptors")]
    Empty,
    /// The spec puts all device-readable descriptors before the device-writable ones.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// A descriptor points outside guest RAM.
    #[error("descriptor [{addr:#x}, +{len:#x}) is not in guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    /// An access past the end of the chain's buffers.
    #[error("bytes [{offset}, +{len}) are past the end of the chain's {total} bytes")]
    OutOfRange { offset: usize, len: usize, total: usize },
    /// Guest memory refused an access that was checked before.
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// A guest buffer: one descriptor, or the part of one that an access covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub addr: GuestAddress,
    pub len: usize,
}

/// Buffers of one direction, in chain order, addressed as one byte stream.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    list: Vec<Segment>,
    total: usize,
}

impl Segments {
    fn push(&mut self, segment: Segment) {
        if segment.len > 0 {
            self.total += segment.len;
            self.list.push(segment);
        }
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.total
    }

    /// The pieces of guest memory that make up bytes `[offset, offset + len)` of the stream.
    pub fn pieces(&self, offset: usize, len: usize) -> Result<Vec<Segment>, ChainError> {
        let out_of_range = || ChainError::OutOfRange { offset, len, total: self.total };
        let end =
            offset.checked_add(len).filter(|&end| end <= self.total).ok_or_else(out_of_range)?;
        let mut pieces = Vec::new();
        let mut start = 0usize;
        for segment in &self.list {
            let segment_end = start + segment.len;
            let from = offset.max(start);
            let to = end.min(segment_end);
            if from < to {
                let addr = segment.addr.0 + (from - start) as u64;
                pieces.push(Segment { addr: GuestAddress(addr), len: to - from });
            }
            if segment_end >= end {
                break;
            }
            start = segment_end;
        }
        Ok(pieces)
    }

    /// Copies bytes `[offset, offset + buf.len())` of the stream into `buf`.
    pub fn read_at(
        &self,
        memory: &GuestMemory,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), ChainError> {
        let mut done = 0;
        for piece in self.pieces(offset, buf.len())? {
            memory.read_slice(&mut buf[done..done + piece.len], piece.addr)?;
            done += piece.len;
        }
        Ok(())
    }

    /// Copies `data` to bytes `[offset, offset + data.len())` of the stream.
    pub fn write_at(
        &self,
        memory: &GuestMemory,
        offset: usize,
        data: &[u8],
    ) -> Result<(), ChainError> {
        let mut done = 0;
        for piece in self.pieces(offset, data.len())? {
            memory.write_slice(&data[done..done + piece.len], piece.addr)?;
            done += piece.len;
        }
        Ok(())
    }
}

/// A parsed descriptor chain.
#[derive(Debug)]
pub(crate) struct Chain {
    /// The head index, which the used ring entry names.
    pub head: u16,
    /// Device-readable buffers.
    pub readable: Segments,
    /// Device-writable buffers.
    pub writable: Segments,
    /// How many descriptors the chain has (zero-length ones included).
    pub descriptors: usize,
}

impl Chain {
    /// Reads the chain's descriptors and checks them. The virtio-queue iterator already bounds
    /// the walk (at most the table size, one level of indirection, under 4 GiB in total), so a
    /// looping or endless chain ends there.
    pub fn parse(
        memory: &GuestMemory,
        chain: virtio_queue::DescriptorChain<&GuestMemory>,
    ) -> Result<Self, ChainError> {
        let mut parsed = Chain {
            head: chain.head_index(),
            readable: Segments::default(),
            writable: Segments::default(),
            descriptors: 0,
        };
        for descriptor in chain {
            let (addr, len) = (descriptor.addr(), descriptor.len());
            if !memory.check_range(addr, len as usize) {
                return Err(ChainError::OutsideMemory { addr: addr.0, len });
            }
            let segment = Segment { addr, len: len as usize };
            if descriptor.is_write_only() {
                parsed.writable.push(segment);
            } else if parsed.writable.list.is_empty() {
                parsed.readable.push(segment);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
            parsed.descriptors += 1;
        }
        if parsed.descriptors == 0 {
            return Err(ChainError::Empty);
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(list: &[(u64, usize)]) -> Segments {
        let mut segments = Segments::default();
        for &(addr, len) in list {
            segments.push(Segment { addr: GuestAddress(addr), len });
        }
        segments
    }

    #[test]
    fn pieces_cover_exactly_the_requested_range() {
        let s = segments(&[(0x1000, 16), (0x3000, 0), (0x2000, 8)]);
        assert_eq!(s.len(), 24);
        assert_eq!(
            s.pieces(10, 10).expect("in range"),
            vec![
                Segment { addr: GuestAddress(0x100a), len: 6 },
                Segment { addr: GuestAddress(0x2000), len: 4 }
            ]
        );
        assert_eq!(s.pieces(24, 0).expect("empty at end"), vec![]);
        assert!(matches!(s.pieces(20, 5), Err(ChainError::OutOfRange { total: 24, .. })));
        assert!(matches!(s.pieces(usize::MAX, 2), Err(ChainError::OutOfRange { .. })));
    }

    #[test]
    fn read_and_write_span_segments() {
        let memory = crate::memory::create(1 << 20).expect("guest memory");
        let s = segments(&[(0x1000, 3), (0x2000, 5)]);
        s.write_at(&memory, 1, b"abcdef").expect("write");
        let mut back = [0u8; 8];
        s.read_at(&memory, 0, &mut back).expect("read");
        assert_eq!(&back, b"\0abcdef\0");
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x2000)).expect("read"), b'c');
    }
}
