//! Putting a vCPU in 64-bit long mode the way the Linux 64-bit boot protocol expects: flat
//! segments from the boot GDT, paging on with an identity map of the first 1 GiB, `rsi`
//! pointing at the zero page; plus FPU state, MSRs and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{segment_from_gdt, BOOT_GDT};
use super::layout::{
    BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR, PVH_INFO_ADDR,
    ZERO_PAGE_ADDR,
};
use super::Error;
use crate::memory::GuestMemory;

const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Present, writable.
const PTE_PW: u64 = 0x3;
/// Present, writable, 2 MiB page.
const PDE_PW_LARGE: u64 = 0x83;

/// Writes the GDT, an empty IDT and identity-mapping page tables (first 1 GiB) to memory.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), Error> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        write(mem, GDT_ADDR + 8 * i as u64, *entry)?;
    }
    write(mem, IDT_ADDR, 0u64)?;
    write(mem, PML4_ADDR, PDPT_ADDR | PTE_PW)?;
    write(mem, PDPT_ADDR, PD_ADDR | PTE_PW)?;
    for i in 0..512u64 {
        write(mem, PD_ADDR + i * 8, (i << 21) | PDE_PW_LARGE)?;
    }
    Ok(())
}

fn write(mem: &GuestMemory, addr: u64, value: u64) -> Result<(), Error> {
    mem.write_obj(value, GuestAddress(addr)).map_err(|source| Error::WriteTables { addr, source })
}

/// The boot GDT and IDT, flat segments from the GDT with code descriptor `code_index`, and the
/// TSS: what both boot protocols start with.
fn flat_segments(mut sregs: kvm_sregs, code_index: u8) -> kvm_sregs {
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    sregs.cs = segment_from_gdt(BOOT_GDT[usize::from(code_index)], code_index);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(BOOT_GDT[3], 3);
    sregs
}

/// Special registers for long mode on the tables [`write_boot_tables`] wrote.
pub fn long_mode_sregs(sregs: kvm_sregs) -> kvm_sregs {
    let mut sregs = flat_segments(sregs, 1);
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// Special registers for PVH entry: flat 32-bit segments, protection on, paging off (and so no
/// PAE or long mode).
pub fn pvh_sregs(sregs: kvm_sregs) -> kvm_sregs {
    let mut sregs = flat_segments(sregs, 4);
    sregs.cr0 = (sregs.cr0 | X86_CR0_PE) & !X86_CR0_PG;
    sregs.cr4 &= !X86_CR4_PAE;
    sregs.efer &= !(EFER_LME | EFER_LMA);
    sregs
}

/// Puts `vcpu` at the PVH entry `entry` with `rbx` = the `hvm_start_info` (write the tables
/// first: the GDT they hold backs the segments).
pub fn setup_pvh(vcpu: &VcpuFd, entry: u64) -> Result<(), Error> {
    let sregs = vcpu.get_sregs().map_err(Error::Sregs)?;
    vcpu.set_sregs(&pvh_sregs(sregs)).map_err(Error::Sregs)?;
    let regs = kvm_regs { rflags: 0x2, rip: entry, rbx: PVH_INFO_ADDR, ..Default::default() };
    vcpu.set_regs(&regs).map_err(Error::Regs)?;
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(Error::Fpu)
}

/// Puts `vcpu` in long mode at `entry` with `rsi` = the zero page (write the tables first).
pub fn setup_long_mode(vcpu: &VcpuFd, entry: u64) -> Result<(), Error> {
    let sregs = vcpu.get_sregs().map_err(Error::Sregs)?;
    vcpu.set_sregs(&long_mode_sregs(sregs)).map_err(Error::Sregs)?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::Regs)?;
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(Error::Fpu)
}

/// The MSRs a booting Linux expects cleared (or, for MISC_ENABLE, fast strings on).
const BOOT_MSRS: [(u32, u64); 10] = [
    (0x174, 0),       // IA32_SYSENTER_CS
    (0x175, 0),       // IA32_SYSENTER_ESP
    (0x176, 0),       // IA32_SYSENTER_EIP
    (0xc000_0081, 0), // STAR
    (0xc000_0082, 0), // LSTAR
    (0xc000_0083, 0), // CSTAR
    (0xc000_0084, 0), // SYSCALL_MASK
    (0xc000_0102, 0), // KERNEL_GS_BASE
    (0x10, 0),        // TSC
    (0x1a0, 1),       // IA32_MISC_ENABLE: fast string operations
];

/// Sets [`BOOT_MSRS`], skipping those the host KVM does not list as supported.
pub fn setup_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<(), Error> {
    let supported = kvm.get_msr_index_list().map_err(Error::Msrs)?;
    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .filter(|(index, _)| supported.as_slice().contains(index))
        .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::MsrCount(entries.len()))?;
    let set = vcpu.set_msrs(&msrs).map_err(Error::Msrs)?;
    if set != entries.len() {
        return Err(Error::MsrRejected { index: entries.get(set).map_or(0, |e| e.index) });
    }
    Ok(())
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Routes the local APIC's LINT0 to the PIC (ExtINT) and LINT1 to NMI, as firmware would.
/// Needs the in-kernel irqchip.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut lapic = vcpu.get_lapic().map_err(Error::Lapic)?;
    for (reg, mode) in [(APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)] {
        let bytes = &mut lapic.regs[reg..reg + 4];
        let mut value =
            u32::from_le_bytes([bytes[0] as u8, bytes[1] as u8, bytes[2] as u8, bytes[3] as u8]);
        value = (value & !0x700) | (mode << 8);
        for (dst, src) in bytes.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(Error::Lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sregs_enable_paging_and_long_mode() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_eq!((s.cs.selector, s.cs.l), (0x08, 1));
        assert_eq!(s.ss.selector, 0x10);
        assert_eq!(s.gdt.limit, 39);
    }

    #[test]
    fn pvh_sregs_are_protected_mode_without_paging() {
        let s = pvh_sregs(long_mode_sregs(kvm_sregs::default()));
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!((s.cr4 & X86_CR4_PAE, s.efer & (EFER_LME | EFER_LMA)), (0, 0));
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x20, 0, 1));
        assert_eq!((s.ds.selector, s.ss.selector), (0x10, 0x10));
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = crate::memory::create(16 << 20).expect("memory");
        write_boot_tables(&mem).expect("tables");
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).expect("read");
        assert_eq!(read(PML4_ADDR), PDPT_ADDR | PTE_PW);
        assert_eq!(read(PDPT_ADDR), PD_ADDR | PTE_PW);
        assert_eq!(read(PD_ADDR), PDE_PW_LARGE);
        assert_eq!(read(PD_ADDR + 511 * 8), (511 << 21) | PDE_PW_LARGE);
        assert_eq!(read(GDT_ADDR + 8), BOOT_GDT[1]);
    }
}
