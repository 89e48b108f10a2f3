//! Tests that read the MP table back from guest memory the way a kernel does: find the
//! floating pointer, check signatures and checksums, walk the entries.

use super::*;
use crate::boot::params::e820_map;

/// One configuration table entry, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Processor { apic_id: u8, version: u8, flags: u8, signature: u32, features: u32 },
    Bus { id: u8, kind: [u8; 6] },
    Ioapic { id: u8, version: u8, flags: u8, addr: u32 },
    IoInterrupt { kind: u8, flags: u16, bus: u8, irq: u8, ioapic: u8, pin: u8 },
    LocalInterrupt { kind: u8, flags: u16, bus: u8, irq: u8, lapic: u8, lint: u8 },
}

struct Parsed {
    table_addr: u64,
    table_len: usize,
    lapic_addr: u32,
    entries: Vec<Entry>,
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    mem.read_slice(&mut bytes, GuestAddress(addr)).expect("read guest memory");
    bytes
}

/// Reads the table at [`MPTABLE_ADDR`], asserting everything a kernel checks on the way.
fn parse(mem: &GuestMemory) -> Parsed {
    let mpf = read(mem, MPTABLE_ADDR, FLOATING_POINTER_LEN);
    assert_eq!(&mpf[0..4], b"_MP_", "floating pointer signature");
    assert_eq!(sum(&mpf), 0, "floating pointer checksum");
    assert_eq!((mpf[8], mpf[9]), (1, 4), "length 16 bytes, revision 1.4");
    assert_eq!(mpf[11], 0, "a configuration table, not a default configuration");
    let table_addr = u64::from(u32_at(&mpf, 4));

    let header = read(mem, table_addr, HEADER_LEN);
    assert_eq!(&header[0..4], b"PCMP", "table signature");
    assert_eq!(header[6], 4, "table revision 1.4");
    let table_len = usize::from(u16_at(&header, 4));
    let table = read(mem, table_addr, table_len);
    assert_eq!(sum(&table), 0, "table checksum");
    let count = usize::from(u16_at(&header, 34));
    let lapic_addr = u32_at(&header, 36);

    let mut entries = Vec::new();
    let mut at = HEADER_LEN;
    for _ in 0..count {
        let e = &table[at..];
        let (entry, len) = match e[0] {
            0 => (
                Entry::Processor {
                    apic_id: e[1],
                    version: e[2],
                    flags: e[3],
                    signature: u32_at(e, 4),
                    features: u32_at(e, 8),
                },
                20,
            ),
            1 => (Entry::Bus { id: e[1], kind: e[2..8].try_into().expect("6 bytes") }, 8),
            2 => (Entry::Ioapic { id: e[1], version: e[2], flags: e[3], addr: u32_at(e, 4) }, 8),
            3 => (
                Entry::IoInterrupt {
                    kind: e[1],
                    flags: u16_at(e, 2),
                    bus: e[4],
                    irq: e[5],
                    ioapic: e[6],
                    pin: e[7],
                },
                8,
            ),
            4 => (
                Entry::LocalInterrupt {
                    kind: e[1],
                    flags: u16_at(e, 2),
                    bus: e[4],
                    irq: e[5],
                    lapic: e[6],
                    lint: e[7],
                },
                8,
            ),
            other => panic!("unknown entry type {other} at offset {at}"),
        };
        entries.push(entry);
        at += len;
    }
    assert_eq!(at, table_len, "the entries fill the table exactly");
    Parsed { table_addr, table_len, lapic_addr, entries }
}

#[test]
fn table_describes_every_vcpu_the_bus_and_the_ioapic() {
    let mem = crate::memory::create(64 << 20).expect("memory");
    write(&mem, 4).expect("mp table");
    let t = parse(&mem);
    assert_eq!(t.table_addr, MPTABLE_ADDR + 16, "the table follows the pointer");
    assert_eq!(t.lapic_addr, 0xfee0_0000);
    let cpu = CpuSignature::host();

    let processors: Vec<_> =
        t.entries.iter().filter(|e| matches!(e, Entry::Processor { .. })).collect();
    assert_eq!(processors.len(), 4);
    for (id, p) in (0u8..).zip(&processors) {
        let flags = if id == 0 { 0b11 } else { 0b01 };
        let expected = Entry::Processor {
            apic_id: id,
            version: 0x14,
            flags,
            signature: cpu.signature,
            features: cpu.features,
        };
        assert_eq!(**p, expected, "processor {id}: enabled, bootstrap flag on vCPU 0 only");
    }
    assert!(t.entries.contains(&Entry::Bus { id: 0, kind: *b"ISA   " }));
    let ioapic = Entry::Ioapic { id: 4, version: 0x11, flags: 1, addr: 0xfec0_0000 };
    assert!(t.entries.contains(&ioapic), "IOAPIC with the id after the last vCPU");

    let pins: Vec<_> = t
        .entries
        .iter()
        .filter_map(|e| match *e {
            Entry::IoInterrupt { kind: 0, flags: 0, bus: 0, irq, ioapic: 4, pin } => {
                Some((irq, pin))
            }
            Entry::IoInterrupt { .. } => panic!("unexpected I/O interrupt entry {e:?}"),
            _ => None,
        })
        .collect();
    let expected: Vec<_> = (0..=MAX_GSI).map(|gsi| (gsi, gsi)).collect();
    assert_eq!(pins, expected, "ISA IRQs 0-15 and GSIs up to {MAX_GSI}, each on its own pin");

    let lints: Vec<_> =
        t.entries.iter().filter(|e| matches!(e, Entry::LocalInterrupt { .. })).collect();
    let extint = Entry::LocalInterrupt { kind: 3, flags: 0, bus: 0, irq: 0, lapic: 0xff, lint: 0 };
    let nmi = Entry::LocalInterrupt { kind: 1, flags: 0, bus: 0, irq: 0, lapic: 0xff, lint: 1 };
    assert_eq!(lints, [&extint, &nmi]);
    assert_eq!(t.entries.len(), 4 + 1 + 1 + 24 + 2);
}

#[test]
fn entries_come_in_ascending_type_order() {
    let mem = crate::memory::create(16 << 20).expect("memory");
    write(&mem, 2).expect("mp table");
    let kind = |e: &Entry| match e {
        Entry::Processor { .. } => 0,
        Entry::Bus { .. } => 1,
        Entry::Ioapic { .. } => 2,
        Entry::IoInterrupt { .. } => 3,
        Entry::LocalInterrupt { .. } => 4,
    };
    let kinds: Vec<u8> = parse(&mem).entries.iter().map(kind).collect();
    assert!(kinds.windows(2).all(|w| w[0] <= w[1]), "{kinds:?}");
}

#[test]
fn largest_table_stays_outside_guest_ram() {
    let mem = crate::memory::create(64 << 20).expect("memory");
    write(&mem, MAX_VCPUS).expect("mp table");
    let t = parse(&mem);
    assert_eq!(t.entries.iter().filter(|e| matches!(e, Entry::Processor { .. })).count(), 254);
    assert!(t.entries.contains(&Entry::Ioapic {
        id: 254,
        version: 0x11,
        flags: 1,
        addr: IOAPIC_ADDR
    }));
    let (start, end) = (MPTABLE_ADDR, t.table_addr + t.table_len as u64);
    assert!(end <= HIMEM_START);
    for ram in e820_map(&mem) {
        let (addr, size) = (ram.addr, ram.size);
        let overlaps = addr < end && start < addr + size;
        assert!(!overlaps, "e820 RAM {addr:#x}+{size:#x} overlaps the MP table");
    }
}

#[test]
fn vcpu_counts_it_cannot_describe_are_refused() {
    let mem = crate::memory::create(16 << 20).expect("memory");
    for count in [0, MAX_VCPUS + 1] {
        match write(&mem, count) {
            Err(Error::VcpuCount { count: c, max }) => assert_eq!((c, max), (count, MAX_VCPUS)),
            other => panic!("{count} vCPUs: expected a VcpuCount error, got {other:?}"),
        }
    }
    let mpf = read(&mem, MPTABLE_ADDR, 4);
    assert_ne!(mpf, b"_MP_", "nothing written on error");
}

#[test]
fn checksum_makes_the_sum_zero() {
    let bytes = [0x12, 0xff, 0x80, 0x01];
    assert_eq!(sum(&bytes).wrapping_add(checksum(&bytes)), 0);
    assert_eq!(checksum(&[]), 0);
}
