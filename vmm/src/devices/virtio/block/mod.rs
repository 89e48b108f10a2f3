//! virtio-blk (device type 2) over a host file or block device: one request queue, served by
//! the "virtio-blk" worker thread with pread/pwrite straight to and from guest memory.
//!
//! Features offered:
//! - `FLUSH`: writes land in the host page cache; a FLUSH request is an fdatasync, so the guest
//!   gets write-back semantics with a working barrier;
//! - `SEG_MAX` (queue size - 2): the most data buffers a request may have; requests with more
//!   descriptors are refused with IOERR. Without it Linux sends one segment per request;
//! - `RO` when the disk is read-only: writes fail with IOERR.
//!
//! Not offered: `SIZE_MAX` (any buffer size is fine), `BLK_SIZE`/topology (512-byte sectors),
//! discard and write-zeroes (answered UNSUPP like any unknown request type).
//!
//! The serial (GET_ID) is derived from the file's inode and device numbers, `<ino>-<dev>` in
//! hex, NUL-padded to 20 bytes: stable while the file exists, without a constructor argument.

mod file_io;
mod request;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;

use super::worker::Worker;
use super::worker_device::{Identity, WorkerDevice};
use request::{BlockProcessor, Disk};
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
};

/// The virtio device id of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// Bytes per sector, the unit of the capacity and of request positions.
pub const SECTOR_SIZE: u64 = 512;
/// Entries of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data buffers per request: a chain has at most `QUEUE_SIZE` descriptors (indirect tables
/// aside), two of which carry the header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the GET_ID answer.
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// capacity (u64), size_max (u32, not offered: 0), seg_max (u32).
const CONFIG_LEN: usize = 16;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk's size could not be read.
    #[error("cannot find the size of the disk image: {0}")]
    Size(#[source] io::Error),
    /// The disk's identity (for its serial) could not be read.
    #[error("cannot stat the disk image: {0}")]
    Metadata(#[source] io::Error),
    /// The worker thread or its eventfds could not be created.
    #[error("cannot start the virtio-blk worker: {0}")]
    Worker(#[source] io::Error),
}

/// A virtio-blk device backed by a file.
pub type Block = WorkerDevice<DiskInfo>;

/// What a block device tells about its disk.
pub struct DiskInfo {
    capacity: u64,
    serial: [u8; SERIAL_LEN],
}

impl Block {
    /// A disk of `file`'s size (rounded down to whole sectors); `read_only` refuses writes.
    /// Block devices are sized like files (by seeking to their end).
    pub fn new(file: File, read_only: bool) -> Result<Block, Error> {
        let size = (&file).seek(SeekFrom::End(0)).map_err(Error::Size)?;
        let capacity = size / SECTOR_SIZE;
        let metadata = file.metadata().map_err(Error::Metadata)?;
        let serial = derive_serial(metadata.ino(), metadata.dev());
        let mut features = 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = vec![0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let disk = Disk { file, read_only, size: capacity * SECTOR_SIZE, serial };
        let worker = Worker::spawn("virtio-blk", QUEUE_SIZES.len(), BlockProcessor::new(disk))
            .map_err(Error::Worker)?;
        let identity = Identity { device_type: DEVICE_TYPE, queue_sizes: QUEUE_SIZES, features };
        Ok(WorkerDevice::from_parts(identity, config, worker, DiskInfo { capacity, serial }))
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.state().capacity
    }

    /// The GET_ID answer: the serial, NUL-padded.
    pub fn serial(&self) -> &[u8; SERIAL_LEN] {
        &self.state().serial
    }
}

/// `<ino>-<dev>` in hex, NUL-padded (inode first: if the string is cut, the less unique part
/// goes).
fn derive_serial(ino: u64, dev: u64) -> [u8; SERIAL_LEN] {
    let text = format!("{ino:x}-{dev:x}");
    let mut serial = [0u8; SERIAL_LEN];
    let count = text.len().min(SERIAL_LEN);
    serial[..count].copy_from_slice(&text.as_bytes()[..count]);
    serial
}
