//! Guest RAM and the guest physical address layout.
//!
//! RAM starts at guest physical address 0. The 1 GiB below 4 GiB is a hole for device MMIO
//! (virtio-mmio devices, the IOAPIC and local APIC); RAM that does not fit below the hole
//! continues at 4 GiB.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO hole (up to 4 GiB).
pub const MMIO_HOLE_SIZE: u64 = 0x4000_0000;
/// Where virtio-mmio devices are placed, one [`VIRTIO_MMIO_SLOT`] apart.
pub const VIRTIO_MMIO_START: u64 = MMIO_HOLE_START;
/// Address space given to each virtio-mmio device.
pub const VIRTIO_MMIO_SLOT: u64 = 0x1000;

/// Guest RAM as the VMM maps it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors building guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory size must be a non-zero multiple of 4 KiB, got {0:#x} bytes
    #[error("guest memory size must be a non-zero multiple of 4 KiB, got {0:#x} bytes")]
    BadSize(u64),
    /// Could not map guest memory
    #[error("could not map guest memory: {0}")]
    Mmap(#[from] vm_memory::mmap::FromRangesError),
}

/// The RAM ranges (start, length) for `size` bytes of guest memory, skipping the MMIO hole.
pub fn ram_ranges(size: u64) -> Result<Vec<(GuestAddress, usize)>, Error> {
    if size == 0 || !size.is_multiple_of(0x1000) || usize::try_from(size).is_err() {
        return Err(Error::BadSize(size));
    }
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        let high_start = MMIO_HOLE_START + MMIO_HOLE_SIZE;
        ranges.push((GuestAddress(high_start), (size - low) as usize));
    }
    Ok(ranges)
}

/// Maps `size` bytes of anonymous guest RAM.
pub fn create(size: u64) -> Result<GuestMemory, Error> {
    Ok(GuestMemoryMmap::from_ranges(&ram_ranges(size)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_region() {
        let mem = create(16 << 20).expect("16 MiB");
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.iter().next().map(|r| r.len()), Some(16 << 20));
    }

    #[test]
    fn large_memory_skips_the_hole() {
        let ranges = ram_ranges(4 << 30).expect("4 GiB");
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(ranges[1].0, GuestAddress(1 << 32));
        assert_eq!(ranges[1].1 as u64, (4 << 30) - MMIO_HOLE_START);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(ram_ranges(0), Err(Error::BadSize(0))));
        assert!(matches!(ram_ranges(4097), Err(Error::BadSize(4097))));
    }
}
