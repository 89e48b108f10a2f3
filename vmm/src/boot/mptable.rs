//! The MP table (Intel MultiProcessor Specification 1.4) that tells Linux, without ACPI, how
//! many CPUs there are and how interrupts are wired: one processor entry per vCPU, one ISA bus,
//! the in-kernel IOAPIC, an I/O interrupt entry per IOAPIC pin and the local APICs' LINT pins.
//!
//! Without it Linux brings up only the boot vCPU and never programs the IOAPIC, so devices
//! whose interrupts are above the PIC's 16 lines (virtio-mmio on GSIs 16 to 23) stay silent.
//!
//! The floating pointer goes at the start of the EBDA, one of the places Linux scans for it
//! (the first KiB at 639 KiB); the configuration table follows it. The e820 map leaves that
//! area out of RAM, so the kernel does not reuse it before reading the table.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{HIMEM_START, MPTABLE_ADDR};
use super::Error;
use crate::memory::GuestMemory;

/// Highest GSI with an I/O interrupt entry. KVM's IOAPIC has 24 pins: ISA IRQs 0 to 15 keep
/// their numbers, and virtio-mmio devices use 5 and up (free ISA lines) and 16 to 23.
pub const MAX_GSI: u8 = 23;
/// Most vCPUs the table can describe: xAPIC ids are 8 bits, 0xff is the broadcast id, and the
/// IOAPIC takes the id after the last vCPU.
pub const MAX_VCPUS: u8 = 0xfe;
/// Where the in-kernel IOAPIC sits (KVM's fixed default).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Where every local APIC sits (the architectural default).
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

const FLOATING_POINTER_SIGNATURE: &[u8; 4] = b"_MP_";
const TABLE_SIGNATURE: &[u8; 4] = b"PCMP";
/// MP specification revision 1.4.
const SPEC_REVISION: u8 = 4;
const OEM_ID: &[u8; 8] = b"BAZAAR  ";
const PRODUCT_ID: &[u8; 12] = b"BAZAAR-VMM  ";
/// Version register values of KVM's local APIC and IOAPIC (integrated APIC, 82093AA IOAPIC).
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_BUS_ID: u8 = 0;
const ISA_BUS_TYPE: &[u8; 6] = b"ISA   ";

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
/// Every entry but a processor's is 8 bytes.
const SHORT_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
const IOAPIC_ENABLED: u8 = 1 << 0;

/// Interrupt types of I/O and local interrupt entries.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// Polarity and trigger mode "as the bus specifies": edge, active high on ISA, which is what
/// irqfd-driven interrupts are.
const INT_FLAGS_CONFORM: u16 = 0;
/// A local interrupt entry's destination meaning every local APIC.
const ALL_LOCAL_APICS: u8 = 0xff;

/// What the processor entries say about the CPU: CPUID leaf 1's EAX (family, model, stepping)
/// and EDX (feature flags). Linux only prints them; they are the host's, which KVM passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSignature {
    pub signature: u32,
    pub features: u32,
}

impl CpuSignature {
    /// The host CPU's signature and feature flags.
    pub fn host() -> Self {
        let leaf1 = std::arch::x86_64::__cpuid(1);
        Self { signature: leaf1.eax, features: leaf1.edx }
    }
}

/// Writes the floating pointer and the configuration table for `vcpus` vCPUs.
pub fn write(mem: &GuestMemory, vcpus: u8) -> Result<(), Error> {
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(Error::VcpuCount { count: vcpus, max: MAX_VCPUS });
    }
    let table_addr = MPTABLE_ADDR + FLOATING_POINTER_LEN as u64;
    let table = config_table(vcpus, CpuSignature::host());
    // Holds for MAX_VCPUS (the table is then about 5 KiB): the area up to HIMEM_START is
    // outside the e820 RAM ranges.
    debug_assert!(table_addr + table.len() as u64 <= HIMEM_START);
    // Below 1 MiB, so the 32-bit pointer always holds it.
    let pointer = floating_pointer(table_addr as u32);
    for (addr, bytes) in [(MPTABLE_ADDR, &pointer[..]), (table_addr, &table[..])] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| Error::WriteTables { addr, source })?;
    }
    Ok(())
}

/// The byte that makes `bytes` sum to zero (mod 256), as every MP structure requires.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The 16-byte floating pointer structure pointing at the configuration table.
fn floating_pointer(table_addr: u32) -> [u8; FLOATING_POINTER_LEN] {
    let mut p = [0u8; FLOATING_POINTER_LEN];
    p[0..4].copy_from_slice(FLOATING_POINTER_SIGNATURE);
    p[4..8].copy_from_slice(&table_addr.to_le_bytes());
    p[8] = 1; // length in 16-byte units
    p[9] = SPEC_REVISION;
    // p[11] (feature byte 1) = 0: a configuration table is present, no default configuration.
    // p[12] (feature byte 2) = 0: no IMCR, the PIC is in virtual-wire mode.
    p[10] = checksum(&p);
    p
}

/// The configuration table: header, then entries in ascending type order as the
/// specification requires.
fn config_table(vcpus: u8, cpu: CpuSignature) -> Vec<u8> {
    let ioapic_id = vcpus;
    let mut entries: Vec<Vec<u8>> = Vec::new();
    for apic_id in 0..vcpus {
        entries.push(processor_entry(apic_id, cpu).to_vec());
    }
    entries.push(bus_entry().to_vec());
    entries.push(ioapic_entry(ioapic_id).to_vec());
    // Line n to IOAPIC pin n: KVM's default routing connects GSI n to pin n (and, below 16, to
    // the PIC too), the PIT's IRQ 0 included.
    for gsi in 0..=MAX_GSI {
        let entry = interrupt_entry(ENTRY_IO_INTERRUPT, INT_VECTORED, gsi, ioapic_id, gsi);
        entries.push(entry.to_vec());
    }
    // LINT0 of every local APIC takes the PIC's output (ExtINT), LINT1 the NMI, as
    // `regs::setup_lint` programs them.
    for (kind, lint) in [(INT_EXTINT, 0), (INT_NMI, 1)] {
        let entry = interrupt_entry(ENTRY_LOCAL_INTERRUPT, kind, 0, ALL_LOCAL_APICS, lint);
        entries.push(entry.to_vec());
    }

    let body: Vec<u8> = entries.concat();
    let mut table = Vec::with_capacity(HEADER_LEN + body.len());
    table.extend_from_slice(TABLE_SIGNATURE);
    // At most 254 processor entries plus 29 others: always fits both u16 fields.
    table.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_le_bytes());
    table.push(SPEC_REVISION);
    table.push(0); // checksum, filled in below
    table.extend_from_slice(OEM_ID);
    table.extend_from_slice(PRODUCT_ID);
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    table.push(0); // extended table checksum
    table.push(0); // reserved
    table.extend_from_slice(&body);
    table[7] = checksum(&table);
    table
}

fn processor_entry(apic_id: u8, cpu: CpuSignature) -> [u8; PROCESSOR_ENTRY_LEN] {
    let mut e = [0u8; PROCESSOR_ENTRY_LEN];
    e[0] = ENTRY_PROCESSOR;
    e[1] = apic_id;
    e[2] = LAPIC_VERSION;
    // vCPU 0 is the one KVM starts; the others wait for INIT/SIPI.
    e[3] = CPU_ENABLED | if apic_id == 0 { CPU_BOOTSTRAP } else { 0 };
    e[4..8].copy_from_slice(&cpu.signature.to_le_bytes());
    e[8..12].copy_from_slice(&cpu.features.to_le_bytes());
    e
}

fn bus_entry() -> [u8; SHORT_ENTRY_LEN] {
    let mut e = [0u8; SHORT_ENTRY_LEN];
    e[0] = ENTRY_BUS;
    e[1] = ISA_BUS_ID;
    e[2..8].copy_from_slice(ISA_BUS_TYPE);
    e
}

fn ioapic_entry(id: u8) -> [u8; SHORT_ENTRY_LEN] {
    let mut e = [0u8; SHORT_ENTRY_LEN];
    e[0] = ENTRY_IOAPIC;
    e[1] = id;
    e[2] = IOAPIC_VERSION;
    e[3] = IOAPIC_ENABLED;
    e[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    e
}

/// An I/O interrupt (`ENTRY_IO_INTERRUPT`) or local interrupt (`ENTRY_LOCAL_INTERRUPT`) entry,
/// which share one layout: interrupt type `kind` from ISA bus line `source_irq` to pin
/// `dest_pin` of `dest_id` (an IOAPIC, or local APICs).
fn interrupt_entry(
    entry_type: u8,
    kind: u8,
    source_irq: u8,
    dest_id: u8,
    dest_pin: u8,
) -> [u8; SHORT_ENTRY_LEN] {
    let mut e = [0u8; SHORT_ENTRY_LEN];
    e[0] = entry_type;
    e[1] = kind;
    e[2..4].copy_from_slice(&INT_FLAGS_CONFORM.to_le_bytes());
    e[4] = ISA_BUS_ID;
    e[5] = source_irq;
    e[6] = dest_id;
    e[7] = dest_pin;
    e
}

#[cfg(test)]
#[path = "mptable_tests.rs"]
mod tests;
