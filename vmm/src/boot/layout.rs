//! Where the boot code puts things in low guest memory (all below 1 MiB except the kernel).

/// The GDT: null, 64-bit code, data, TSS.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT (the kernel installs its own before enabling interrupts).
pub const IDT_ADDR: u64 = 0x520;
/// PVH boot: the `hvm_start_info` structure (56 bytes),
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// its module list (the initrd: one 32-byte entry),
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// and its memory map (24-byte entries, room for 165 before the zero page).
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer (the kernel switches stacks at once).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the identity mapping.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table of the identity mapping.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory of the identity mapping: 512 entries of 2 MiB, the first 1 GiB.
pub const PD_ADDR: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line accepted (the kernel may accept less: `setup_header.cmdline_size`).
pub const CMDLINE_MAX: usize = 4096;
/// Start of the extended BIOS data area; RAM below it is usable by the guest.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table's floating pointer, with the configuration table after it: the start of the
/// EBDA is one of the places Linux scans for the pointer, and it is outside e820 RAM.
pub const MPTABLE_ADDR: u64 = EBDA_START;
/// Start of high memory: where the kernel is loaded and the second e820 RAM range begins.
pub const HIMEM_START: u64 = 0x10_0000;
/// Highest address the kernel may find an initrd at, for kernels that do not say.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
