//! Guest RAM and the guest physical address layout.
//!
//! RAM starts at guest physical address 0. The 1 GiB below 4 GiB is a hole for device MMIO
//! (virtio-mmio devices, the IOAPIC and local APIC); RAM that does not fit below the hole
//! continues at 4 GiB.
//!
//! RAM is one memfd mapped shared, not anonymous memory: vhost-user backends (virtiofsd) must
//! map the same pages to reach the virtqueues and buffers, and a sandbox always has one.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

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
    /// Could not create the file backing guest memory
    #[error("could not create the memfd backing guest memory: {0}")]
    Memfd(#[source] std::io::Error),
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

/// Maps `size` bytes of guest RAM from a fresh memfd, each RAM range at its own offset in the
/// file (so a vhost-user backend maps a range from the same fd and offset).
pub fn create(size: u64) -> Result<GuestMemory, Error> {
    let ranges = ram_ranges(size)?;
    let file = Arc::new(memfd(c"bazaar-guest-ram")?);
    // Pages are allocated on first touch; the length only reserves the file's size.
    file.set_len(size).map_err(Error::Memfd)?;
    let mut offset = 0u64;
    let with_files: Vec<_> = ranges
        .into_iter()
        .map(|(start, len)| {
            let region = (start, len, Some(FileOffset::from_arc(file.clone(), offset)));
            offset += len as u64;
            region
        })
        .collect();
    Ok(GuestMemoryMmap::from_ranges_with_files(with_files)?)
}

/// Why a guest range was not discarded.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// The range is not whole 4 KiB pages.
    #[error("[{addr:#x}, +{len:#x}) is not whole 4 KiB pages")]
    Unaligned { addr: u64, len: usize },
    /// The range is not inside one RAM region.
    #[error("[{addr:#x}, +{len:#x}) is not inside one guest RAM region")]
    OutsideRam { addr: u64, len: usize },
    /// The kernel refused to drop the pages.
    #[error("madvise(MADV_REMOVE) of [{addr:#x}, +{len:#x}) failed: {source}")]
    Madvise {
        addr: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Gives the host memory behind guest pages `[addr, addr + len)` back to the host: the memfd's
/// pages are freed (for every process that maps them, virtiofsd included), and the guest reads
/// zeros there the next time it touches them. For free page reporting, where the guest says
/// which of its free pages it will not read before writing.
pub fn discard(memory: &GuestMemory, addr: GuestAddress, len: usize) -> Result<(), DiscardError> {
    const PAGE: u64 = 0x1000;
    if !addr.0.is_multiple_of(PAGE) || !(len as u64).is_multiple_of(PAGE) {
        return Err(DiscardError::Unaligned { addr: addr.0, len });
    }
    let outside = || DiscardError::OutsideRam { addr: addr.0, len };
    let region = memory.find_region(addr).ok_or_else(outside)?;
    let offset = addr.0 - region.start_addr().0;
    if offset.checked_add(len as u64).is_none_or(|end| end > region.len()) {
        return Err(outside());
    }
    let host = region.get_host_address(MemoryRegionAddress(offset)).map_err(|_| outside())?;
    // SAFETY: [host, host + len) lies inside this region's shared mapping (checked above), which
    // stays mapped for the life of `memory`. MADV_REMOVE only frees the file's pages there; the
    // mapping remains, and a later guest access faults in a zeroed page. No Rust reference
    // points into guest memory (it is only ever read and written through volatile copies).
    let ret = unsafe { libc::madvise(host.cast(), len, libc::MADV_REMOVE) };
    if ret != 0 {
        let source = std::io::Error::last_os_error();
        return Err(DiscardError::Madvise { addr: addr.0, len, source });
    }
    Ok(())
}

/// Bytes of the memfd behind `memory` that hold pages (what the host backs), for tests.
#[cfg(test)]
pub(crate) fn backed_bytes(memory: &GuestMemory) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let region = memory.iter().next().expect("a region");
    let file = region.file_offset().expect("file backed").file();
    file.metadata().expect("fstat the memfd").blocks() * 512
}

/// A new close-on-exec memfd named `name` (the name shows in /proc/<pid>/maps).
fn memfd(name: &CStr) -> Result<File, Error> {
    // SAFETY: `name` is a valid NUL-terminated string; the call only creates a descriptor.
    let fd: RawFd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn discarded_pages_go_back_to_the_host_and_read_as_zeros() {
        let memory = create(16 << 20).expect("16 MiB");
        memory.write_slice(&[0xaa; 0x4000], GuestAddress(0x10_0000)).expect("touch 4 pages");
        assert_eq!(backed_bytes(&memory), 0x4000);
        discard(&memory, GuestAddress(0x10_1000), 0x2000).expect("discard the middle two");
        assert_eq!(backed_bytes(&memory), 0x2000);
        let mut back = [0u8; 0x4000];
        memory.read_slice(&mut back, GuestAddress(0x10_0000)).expect("read back");
        assert!(back[..0x1000].iter().all(|&b| b == 0xaa), "the page before is kept");
        assert!(back[0x1000..0x3000].iter().all(|&b| b == 0), "discarded pages read as zeros");
        assert!(back[0x3000..].iter().all(|&b| b == 0xaa), "the page after is kept");
    }

    #[test]
    fn discard_refuses_partial_pages_and_ranges_outside_ram() {
        let memory = create(16 << 20).expect("16 MiB");
        memory.write_slice(&[0xaa; 0x2000], GuestAddress(0)).expect("touch");
        assert!(matches!(
            discard(&memory, GuestAddress(0x800), 0x1000),
            Err(DiscardError::Unaligned { .. })
        ));
        assert!(matches!(
            discard(&memory, GuestAddress(0), 0x1800),
            Err(DiscardError::Unaligned { .. })
        ));
        assert!(matches!(
            discard(&memory, GuestAddress((16 << 20) - 0x1000), 0x2000),
            Err(DiscardError::OutsideRam { .. })
        ));
        assert!(matches!(
            discard(&memory, GuestAddress(MMIO_HOLE_START), 0x1000),
            Err(DiscardError::OutsideRam { .. })
        ));
        assert_eq!(backed_bytes(&memory), 0x2000, "nothing was discarded");
    }

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
    fn memory_is_one_shared_file_at_consecutive_offsets() {
        let mem = create((3 << 30) + (1 << 30)).expect("4 GiB, not touched");
        let offsets: Vec<_> =
            mem.iter().map(|r| r.file_offset().map(|f| f.start()).expect("file backed")).collect();
        assert_eq!(offsets, vec![0, MMIO_HOLE_START]);
        let fds: Vec<_> = mem
            .iter()
            .filter_map(|r| r.file_offset().map(|f| std::os::fd::AsRawFd::as_raw_fd(f.file())))
            .collect();
        assert_eq!(fds[0], fds[1], "one memfd for all of RAM");
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(ram_ranges(0), Err(Error::BadSize(0))));
        assert!(matches!(ram_ranges(4097), Err(Error::BadSize(4097))));
    }
}
