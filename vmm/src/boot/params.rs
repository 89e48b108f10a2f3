//! The zero page (`struct boot_params`): setup header, command line, initrd, e820 map.

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::kernel::LoadedKernel;
use super::layout::{CMDLINE_ADDR, EBDA_START, HIMEM_START, ZERO_PAGE_ADDR};
use super::Error;
use crate::memory::GuestMemory;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
const E820_RAM: u32 = 1;

/// The e820 map for `mem`: low RAM up to the EBDA, then RAM from 1 MiB, then any region above
/// the MMIO hole. The EBDA (where the MP table is) and the legacy area above it stay out.
pub fn e820_map(mem: &GuestMemory) -> Vec<boot_e820_entry> {
    let mut map = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        if start == 0 {
            map.push(boot_e820_entry { addr: 0, size: EBDA_START.min(end), r#type: E820_RAM });
            if end > HIMEM_START {
                map.push(boot_e820_entry {
                    addr: HIMEM_START,
                    size: end - HIMEM_START,
                    r#type: E820_RAM,
                });
            }
        } else {
            map.push(boot_e820_entry { addr: start, size: region.len(), r#type: E820_RAM });
        }
    }
    map
}

/// Writes `cmdline` and the zero page for `kernel` (and an initrd at `initrd`).
pub fn write_zero_page(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<(GuestAddress, u32)>,
) -> Result<(), Error> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(Error::Cmdline)?;
    let cmdline_len =
        cmdline.as_cstring().map(|c| c.as_bytes().len()).map_err(Error::CmdlineText)?;

    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size;
    }
    let map = e820_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(Error::E820TooLong(map.len()));
    }
    params.e820_entries = map.len() as u8;
    params.e820_table[..map.len()].copy_from_slice(&map);

    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(Error::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn e820_skips_the_legacy_hole() {
        let mem = crate::memory::create(64 << 20).expect("memory");
        let map = e820_map(&mem);
        assert_eq!(map.len(), 2);
        assert_eq!((map[0].addr, map[0].size), (0, EBDA_START));
        assert_eq!((map[1].addr, map[1].size), (HIMEM_START, (64 << 20) - HIMEM_START));
    }

    #[test]
    fn zero_page_carries_cmdline_and_initrd() {
        let mem = crate::memory::create(64 << 20).expect("memory");
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            end: 0x200_0000,
            setup_header: None,
            pvh_entry: None,
        };
        let mut cmdline = Cmdline::new(256).expect("cmdline");
        cmdline.insert_str("console=ttyS0").expect("insert");
        write_zero_page(&mem, &kernel, &cmdline, Some((GuestAddress(0x300_0000), 0x1234)))
            .expect("zero page");
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).expect("read");
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.cmdline_size }, 13);
        assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0x300_0000, 0x1234));
        assert_eq!(p.e820_entries, 2);
        let mut text = [0u8; 14];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_ADDR)).expect("read");
        assert_eq!(&text, b"console=ttyS0\0");
    }
}
