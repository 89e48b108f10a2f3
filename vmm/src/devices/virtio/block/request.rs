//! The virtio-blk worker: takes requests off the queue, runs them against the disk, writes the
//! status byte, and returns the chain.
//!
//! A request is a device-readable header (type u32, reserved u32, sector u64), then the data
//! (device-readable for OUT, device-writable for IN and GET_ID), then a device-writable status
//! byte: the last writable byte of the chain. A chain without a writable byte, or that the
//! chain parser refuses, is returned with nothing written (used length 0): there is nowhere to
//! report the error.

use std::fs::File;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryBackend;

use super::{file_io, SECTOR_SIZE, SEG_MAX, SERIAL_LEN};
use crate::devices::virtio::chain::{Chain, ChainError, Segment};
use crate::devices::virtio::worker::{Activation, Poller, QueueProcessor};
use crate::devices::virtio::{ActivateError, VirtioInterrupt};
use crate::memory::GuestMemory;

/// Bytes of the request header.
const HEADER_LEN: usize = 16;

/// Why a request failed (the guest sees IOERR, or UNSUPP for an unknown type).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("request header unreadable: {0}")]
    Header(#[source] ChainError),
    #[error("{0} data buffers, more than seg_max")]
    TooManySegments(usize),
    #[error("data length {0} is not a multiple of 512")]
    PartialSector(usize),
    #[error("sectors from {sector} for {len} bytes are beyond the disk")]
    BeyondCapacity { sector: u64, len: usize },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("data buffers in the wrong direction for the request type")]
    WrongDirection,
    #[error("bad data buffers: {0}")]
    Buffers(#[from] ChainError),
    #[error("disk I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

/// The disk as the worker sees it.
pub(super) struct Disk {
    pub file: File,
    pub read_only: bool,
    /// Usable size in bytes (whole sectors).
    pub size: u64,
    pub serial: [u8; SERIAL_LEN],
}

struct Active {
    memory: GuestMemory,
    queue: Queue,
    interrupt: VirtioInterrupt,
}

pub(super) struct BlockProcessor {
    disk: Disk,
    active: Option<Active>,
}

impl BlockProcessor {
    pub fn new(disk: Disk) -> Self {
        Self { disk, active: None }
    }

    /// Serves at most one queue's worth of requests; asks to be woken again if more are left.
    fn process_queue(&mut self, poller: &Poller) {
        let Some(active) = self.active.as_mut() else { return };
        let budget = usize::from(active.queue.size());
        let mut added = false;
        for _ in 0..budget {
            let Some(chain) = active.queue.pop_descriptor_chain(&active.memory) else {
                break;
            };
            let head = chain.head_index();
            let used_len = match Chain::parse(&active.memory, chain) {
                Ok(chain) => self.disk.serve(&active.memory, &chain),
                Err(_) => 0,
            };
            // Fails only for a head index outside the queue: nothing can be returned then.
            added |= active.queue.add_used(&active.memory, head, used_len).is_ok();
        }
        if has_more(&mut active.queue, &active.memory) {
            poller.renotify(0);
        }
        if added {
            // The interrupt is an eventfd write; if it fails the guest cannot be told anyway.
            let _ = active.interrupt.signal_used_queue();
        }
    }
}

/// Whether the driver made more chains available than were taken.
fn has_more(queue: &mut Queue, memory: &GuestMemory) -> bool {
    queue
        .avail_idx(memory, std::sync::atomic::Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != queue.next_avail())
}

impl QueueProcessor for BlockProcessor {
    fn activate(&mut self, activation: Activation, poller: &Poller) -> Result<(), ActivateError> {
        let Activation { memory, queues, interrupt, .. } = activation;
        let queue = queues
            .into_iter()
            .next()
            .ok_or_else(|| ActivateError::BadSetup("no request queue".into()))?;
        self.active = Some(Active { memory, queue, interrupt });
        // Requests made available before DRIVER_OK are served now.
        self.process_queue(poller);
        Ok(())
    }

    fn reset(&mut self, _poller: &Poller) {
        self.active = None;
    }

    fn queue_notified(&mut self, _index: usize, poller: &Poller) {
        self.process_queue(poller);
    }
}

impl Disk {
    /// Serves one request and returns how many bytes it wrote into the chain (the used length).
    fn serve(&self, memory: &GuestMemory, chain: &Chain) -> u32 {
        let Some(status_at) = chain.writable.len().checked_sub(1) else {
            return 0;
        };
        let (status, written) = match self.execute(memory, chain, status_at) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(RequestError::Unsupported(_)) => (VIRTIO_BLK_S_UNSUPP, 0),
            Err(_) => (VIRTIO_BLK_S_IOERR, 0),
        };
        if chain.writable.write_at(memory, status_at, &[status as u8]).is_err() {
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Runs the request; `data_len` is the writable bytes before the status byte. Returns the
    /// data bytes written into the chain.
    fn execute(
        &self,
        memory: &GuestMemory,
        chain: &Chain,
        data_len: usize,
    ) -> Result<usize, RequestError> {
        if chain.descriptors > SEG_MAX as usize + 2 {
            return Err(RequestError::TooManySegments(chain.descriptors - 2));
        }
        let mut header = [0u8; HEADER_LEN];
        chain.readable.read_at(memory, 0, &mut header).map_err(RequestError::Header)?;
        let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector);
        // Data goes one way only: extra readable bytes on a read, or writable bytes besides the
        // status on a write, mean the driver got the directions wrong.
        let data_out = chain.readable.len() - HEADER_LEN;
        match request_type {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID if data_out != 0 => {
                Err(RequestError::WrongDirection)
            }
            VIRTIO_BLK_T_OUT if data_len != 0 => Err(RequestError::WrongDirection),
            VIRTIO_BLK_T_IN => {
                let offset = self.byte_offset(sector, data_len)?;
                let pieces = chain.writable.pieces(0, data_len)?;
                self.transfer(memory, &pieces, offset, file_io::read_exact_at)?;
                Ok(data_len)
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let offset = self.byte_offset(sector, data_out)?;
                let pieces = chain.readable.pieces(HEADER_LEN, data_out)?;
                self.transfer(memory, &pieces, offset, file_io::write_all_at)?;
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data()?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let len = data_len.min(SERIAL_LEN);
                chain.writable.write_at(memory, 0, &self.serial[..len])?;
                Ok(len)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// The file offset of `sector`, once `len` bytes from there are known to be whole sectors
    /// inside the disk.
    fn byte_offset(&self, sector: u64, len: usize) -> Result<u64, RequestError> {
        if !(len as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::PartialSector(len));
        }
        sector
            .checked_mul(SECTOR_SIZE)
            .filter(|offset| offset.checked_add(len as u64).is_some_and(|end| end <= self.size))
            .ok_or(RequestError::BeyondCapacity { sector, len })
    }

    /// Runs `io` over the guest memory of `pieces`, the file position advancing from `offset`.
    fn transfer(
        &self,
        memory: &GuestMemory,
        pieces: &[Segment],
        mut offset: u64,
        io: fn(&File, &vm_memory::VolatileSlice<'_, ()>, u64) -> std::io::Result<()>,
    ) -> Result<(), RequestError> {
        for piece in pieces {
            for slice in GuestMemoryBackend::get_slices(memory, piece.addr, piece.len) {
                let slice = slice?;
                io(&self.file, &slice, offset)?;
                offset += slice.len() as u64;
            }
        }
        Ok(())
    }
}
