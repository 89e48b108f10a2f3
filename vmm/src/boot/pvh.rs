//! The PVH boot protocol: an ELF kernel with a PVH entry note starts in 32-bit protected mode
//! without paging, `ebx` pointing at an `hvm_start_info` that gives the command line, the
//! initrd (as the first module) and the memory map. It skips the 64-bit protocol's zero page and
//! the page tables, and is what the guest image's vmlinux offers (CONFIG_PVH).

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::layout::{CMDLINE_ADDR, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR};
use super::params::e820_map;
use super::Error;
use crate::memory::GuestMemory;

/// `hvm_start_info.magic`, as the PVH ABI defines it.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Version 1 carries the memory map (version 0 ends before it).
const START_INFO_VERSION: u32 = 1;

/// Writes `hvm_start_info` at [`PVH_INFO_ADDR`], the memory map (the e820 map the 64-bit
/// protocol would give) and, for an initrd at `initrd`, its module entry. The command line must
/// already be at [`CMDLINE_ADDR`].
pub fn write_start_info(
    mem: &GuestMemory,
    initrd: Option<(GuestAddress, u32)>,
) -> Result<(), Error> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.r#type,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(addr, size)| hvm_modlist_entry {
            paddr: addr.0,
            size: u64::from(size),
            ..Default::default()
        })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST_ADDR },
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem).map_err(Error::StartInfo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn start_info_points_at_cmdline_initrd_and_memory_map() {
        let mem = crate::memory::create(64 << 20).expect("memory");
        write_start_info(&mem, Some((GuestAddress(0x300_0000), 0x1234))).expect("start info");
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).expect("read");
        assert_eq!((info.magic, info.version), (XEN_HVM_START_MAGIC_VALUE, 1));
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, PVH_MODLIST_ADDR));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_ADDR)).expect("read");
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1234));
        assert_eq!(info.memmap_entries, 2);
        let ram: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(PVH_MEMMAP_ADDR + 24)).expect("read");
        assert_eq!((ram.addr, ram.size, ram.type_), (0x10_0000, (64 << 20) - 0x10_0000, 1));
    }

    #[test]
    fn no_initrd_means_no_modules() {
        let mem = crate::memory::create(16 << 20).expect("memory");
        write_start_info(&mem, None).expect("start info");
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).expect("read");
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }
}
