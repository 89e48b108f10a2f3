//! Loading the kernel image (bzImage or ELF vmlinux) and the initrd into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::{DEFAULT_INITRD_ADDR_MAX, HIMEM_START};
use super::Error;
use crate::memory::GuestMemory;

/// The 64-bit entry point sits this far into a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// A kernel in guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// The 64-bit boot protocol entry point.
    pub entry: GuestAddress,
    /// First byte after the kernel.
    pub end: u64,
    /// The bzImage's setup header, to copy into the zero page.
    pub setup_header: Option<setup_header>,
    /// The ELF's PVH entry point, when it has one (then PVH is how it boots).
    pub pvh_entry: Option<GuestAddress>,
}

/// Loads the kernel at `path`: an ELF vmlinux when it starts with the ELF magic, else a bzImage.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, Error> {
    let open_err = |source| Error::Open { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(open_err)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(open_err)?;
    file.seek(SeekFrom::Start(0)).map_err(open_err)?;
    let himem = Some(GuestAddress(HIMEM_START));
    if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, himem).map_err(Error::LoadKernel)?;
        let pvh_entry = match r.pvh_boot_cap {
            linux_loader::loader::elf::PvhBootCapability::PvhEntryPresent(a) => Some(a),
            _ => None,
        };
        Ok(LoadedKernel { entry: r.kernel_load, end: r.kernel_end, setup_header: None, pvh_entry })
    } else {
        let r = BzImage::load(mem, None, &mut file, himem).map_err(Error::LoadKernel)?;
        Ok(LoadedKernel {
            entry: GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
            end: r.kernel_end,
            setup_header: r.setup_header,
            pvh_entry: None,
        })
    }
}

/// Where an initrd of `size` bytes goes: as high as possible in the RAM that starts at 0,
/// below `addr_max`, page aligned, above the kernel.
pub fn initrd_address(
    mem: &GuestMemory,
    size: u64,
    kernel_end: u64,
    addr_max: Option<u64>,
) -> Result<GuestAddress, Error> {
    let low_end = mem.find_region(GuestAddress(0)).map_or(0, |r| r.start_addr().0 + r.len());
    let max = addr_max.filter(|&m| m != 0).unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let top = low_end.min(max.saturating_add(1));
    let start = top.checked_sub(size).ok_or(Error::InitrdTooBig(size))? & !0xfff;
    if start < kernel_end {
        return Err(Error::InitrdTooBig(size));
    }
    Ok(GuestAddress(start))
}

/// Loads the initrd at `path` and returns its address and size.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, u32), Error> {
    let open_err = |source| Error::Open { path: path.to_path_buf(), source };
    let data = std::fs::read(path).map_err(open_err)?;
    let size = data.len() as u64;
    let size32 = u32::try_from(size).map_err(|_| Error::InitrdTooBig(size))?;
    let addr_max = kernel.setup_header.map(|h| u64::from(h.initrd_addr_max));
    let addr = initrd_address(mem, size, kernel.end, addr_max)?;
    mem.write_slice(&data, addr).map_err(|_| Error::InitrdTooBig(size))?;
    Ok((addr, size32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_high_below_the_limit() {
        let mem = crate::memory::create(64 << 20).expect("memory");
        let a = initrd_address(&mem, 0x1800, 0x20_0000, None).expect("fits");
        assert_eq!(a.0, (64 << 20) - 0x2000);
        let b = initrd_address(&mem, 0x1000, 0x20_0000, Some(0xff_ffff)).expect("fits");
        assert_eq!(b.0, 0x100_0000 - 0x1000);
        assert!(initrd_address(&mem, 63 << 20, 0x20_0000, None).is_err());
    }
}
