//! The boot GDT and the KVM segment registers derived from it.

use kvm_bindings::kvm_segment;

/// A descriptor from its access/flags bits (`0xf0ff`: flags nibble, access byte), base and
/// 20-bit limit, laid out as the x86 segment descriptor format requires.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT: null, 64-bit code (selector 0x08), data (0x10), TSS (0x18), and the 32-bit
/// code segment PVH entry wants (0x20).
pub const BOOT_GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];

/// The KVM view of descriptor `table_index` holding `entry`.
pub fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    // With 4 KiB granularity the effective limit covers the whole last page.
    let limit = if g == 1 { (raw_limit << 12) | 0xfff } else { raw_limit };
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_present_ring0() {
        let cs = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(cs.selector, 0x08);
        assert_eq!((cs.l, cs.db, cs.present, cs.dpl, cs.s, cs.g), (1, 0, 1, 0, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn pvh_code_segment_is_32_bit() {
        let cs = segment_from_gdt(BOOT_GDT[4], 4);
        assert_eq!((cs.selector, cs.l, cs.db, cs.type_, cs.limit), (0x20, 0, 1, 0xb, 0xffff_ffff));
    }

    #[test]
    fn descriptor_round_trips_base_and_limit() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 2);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!((s.db, s.g, s.type_, s.unusable), (1, 0, 3, 0));
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(segment_from_gdt(BOOT_GDT[0], 0).unusable, 1);
    }
}
