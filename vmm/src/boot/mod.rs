//! Booting Linux: load the kernel and initrd, write the zero page, boot tables and MP table,
//! and set up each vCPU (CPUID, MSRs, LAPIC, and registers on the boot vCPU). An ELF kernel with
//! a PVH entry note boots through PVH (`pvh`); a bzImage, or an ELF without the note, through
//! the 64-bit boot protocol (`params`, `regs`).

pub mod cpuid;
pub mod gdt;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod params;
pub mod pvh;
pub mod regs;

use std::path::{Path, PathBuf};

use kvm_ioctls::{Kvm, VcpuFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;

use crate::memory::GuestMemory;
pub use kernel::LoadedKernel;

/// Errors booting a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A boot file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// linux-loader refused the kernel image.
    #[error("cannot load the kernel: {0}")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// The initrd does not fit in low memory above the kernel.
    #[error("an initrd of {0} bytes does not fit in guest memory")]
    InitrdTooBig(u64),
    /// The command line is invalid or too long.
    #[error("bad kernel command line: {0}")]
    Cmdline(#[source] linux_loader::loader::Error),
    /// The command line cannot be made a C string.
    #[error("bad kernel command line: {0}")]
    CmdlineText(#[source] linux_loader::cmdline::Error),
    /// Writing the zero page failed.
    #[error("cannot write the zero page: {0}")]
    ZeroPage(#[source] linux_loader::configurator::Error),
    /// Writing the PVH start info failed.
    #[error("cannot write the PVH start info: {0}")]
    StartInfo(#[source] linux_loader::configurator::Error),
    /// More e820 entries than the zero page holds.
    #[error("{0} e820 entries do not fit in the zero page")]
    E820TooLong(usize),
    /// Writing the GDT or page tables failed.
    #[error("cannot write boot tables at {addr:#x}: {source}")]
    WriteTables {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// KVM_GET_SUPPORTED_CPUID or KVM_SET_CPUID2 failed.
    #[error("cannot set CPUID: {0}")]
    Cpuid(#[source] kvm_ioctls::Error),
    /// Getting the MSR list or setting MSRs failed.
    #[error("cannot set MSRs: {0}")]
    Msrs(#[source] kvm_ioctls::Error),
    /// Too many MSRs for one KVM call.
    #[error("cannot build a list of {0} MSRs")]
    MsrCount(usize),
    /// KVM accepted only part of the MSR list.
    #[error("KVM refused MSR {index:#x}")]
    MsrRejected { index: u32 },
    /// KVM_GET/SET_SREGS failed.
    #[error("cannot set special registers: {0}")]
    Sregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_REGS failed.
    #[error("cannot set registers: {0}")]
    Regs(#[source] kvm_ioctls::Error),
    /// KVM_SET_FPU failed.
    #[error("cannot set FPU state: {0}")]
    Fpu(#[source] kvm_ioctls::Error),
    /// KVM_GET/SET_LAPIC failed.
    #[error("cannot set up the local APIC: {0}")]
    Lapic(#[source] kvm_ioctls::Error),
    /// The MP table cannot describe this many vCPUs.
    #[error("cannot describe {count} vCPUs in the MP table: 1 to {max} are supported")]
    VcpuCount { count: u8, max: u8 },
    /// A secondary vCPU without an in-kernel irqchip: nothing could ever start it.
    #[error("vCPU {0} needs the in-kernel irqchip: without it no INIT/SIPI can start it")]
    SecondaryWithoutIrqchip(u8),
}

/// Where the boot vCPU starts, and by which protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit boot protocol: long mode, `rsi` = the zero page.
    Linux64(u64),
    /// PVH: 32-bit protected mode, `ebx` = the `hvm_start_info`.
    Pvh(u64),
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Linux64(addr) => write!(f, "64-bit boot protocol entry at {addr:#x}"),
            Entry::Pvh(addr) => write!(f, "PVH entry at {addr:#x}"),
        }
    }
}

/// Loads kernel and initrd, writes the command line, the boot information (PVH start info where
/// the kernel has a PVH entry, else the zero page), boot tables and the MP table for
/// `vcpu_count` vCPUs. Returns where the boot vCPU starts.
pub fn load_linux(
    mem: &GuestMemory,
    kernel_path: &Path,
    initrd_path: Option<&Path>,
    cmdline: &Cmdline,
    vcpu_count: u8,
) -> Result<Entry, Error> {
    let kernel = kernel::load_kernel(mem, kernel_path)?;
    let initrd = initrd_path.map(|p| kernel::load_initrd(mem, p, &kernel)).transpose()?;
    regs::write_boot_tables(mem)?;
    mptable::write(mem, vcpu_count)?;
    match kernel.pvh_entry {
        Some(entry) => {
            linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), cmdline)
                .map_err(Error::Cmdline)?;
            pvh::write_start_info(mem, initrd)?;
            Ok(Entry::Pvh(entry.0))
        }
        None => {
            params::write_zero_page(mem, &kernel, cmdline, initrd)?;
            Ok(Entry::Linux64(kernel.entry.0))
        }
    }
}

/// Sets up vCPU `id` of `count`: CPUID (its APIC id and the topology), MSRs and, with the
/// in-kernel irqchip, the LAPIC's LINT pins. Only vCPU 0, the bootstrap processor, gets the
/// registers to enter the kernel at `entry`: with the irqchip, KVM keeps the others
/// waiting for the INIT-SIPI-SIPI the kernel sends when it brings them up (whatever registers
/// were set, INIT resets them). Without an irqchip nothing can start them, so that is an error.
pub fn setup_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    entry: Entry,
    irqchip: bool,
) -> Result<(), Error> {
    if id != 0 && !irqchip {
        return Err(Error::SecondaryWithoutIrqchip(id));
    }
    cpuid::setup(kvm, vcpu, id, count)?;
    regs::setup_msrs(kvm, vcpu)?;
    if irqchip {
        regs::setup_lint(vcpu)?;
    }
    match entry {
        _ if id != 0 => {}
        Entry::Linux64(addr) => regs::setup_long_mode(vcpu, addr)?,
        Entry::Pvh(addr) => regs::setup_pvh(vcpu, addr)?,
    }
    Ok(())
}
