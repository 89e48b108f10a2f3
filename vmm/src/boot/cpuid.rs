//! The CPUID a vCPU sees: what KVM supports, with the topology fields set for this vCPU and
//! features the VMM does not offer masked out.
//!
//! The topology presented is one package of `vcpu_count` cores with one thread each, APIC id =
//! vCPU index (as in the MP table). KVM passes the host's topology leaves through, so they are
//! rewritten here; otherwise a guest would size its CPU masks from the host's core count.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use super::Error;

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package (HTT).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 ECX: performance-energy bias hint (an MSR the VMM does not emulate).
const LEAF6_ECX_EPB: u32 = 1 << 3;

/// Leaf 4 EAX: cache type [4:0] (0: no more caches) and cache level [7:5].
const LEAF4_CACHE_TYPE_MASK: u32 = 0x1f;
const LEAF4_LEVEL_SHIFT: u32 = 5;
/// Leaf 4 EAX: logical processors sharing the cache, minus one [25:14].
const LEAF4_SHARING_SHIFT: u32 = 14;
const LEAF4_SHARING_MASK: u32 = 0xfff << LEAF4_SHARING_SHIFT;
/// Leaf 4 EAX: cores per package, minus one [31:26].
const LEAF4_CORES_SHIFT: u32 = 26;
const LEAF4_CORES_MASK: u32 = 0x3f << LEAF4_CORES_SHIFT;
/// Leaves 0xb/0x1f ECX [15:8]: level type.
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// APIC ids a package of `vcpu_count` cores spans: the next power of two, as the id fields
/// are bit fields.
fn package_id_span(vcpu_count: u8) -> u32 {
    u32::from(vcpu_count).max(1).next_power_of_two()
}

/// Adjusts KVM's supported CPUID for vCPU `apic_id` of `vcpu_count`.
pub fn filter(cpuid: &mut CpuId, apic_id: u8, vcpu_count: u8) {
    let span = package_id_span(vcpu_count);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                // EBX: APIC id [31:24], addressable logical processor ids [23:16], CLFLUSH
                // line / 8 [15:8].
                entry.ebx = (u32::from(apic_id) << 24) | (span.min(0xff) << 16) | (8 << 8);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if vcpu_count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 if entry.eax & LEAF4_CACHE_TYPE_MASK != 0 => {
                let level = (entry.eax >> LEAF4_LEVEL_SHIFT) & 0x7;
                // L1 and L2 belong to one core (one thread); the L3 to the whole package.
                let sharing = if level >= 3 { span - 1 } else { 0 };
                entry.eax = (entry.eax & !(LEAF4_SHARING_MASK | LEAF4_CORES_MASK))
                    | ((sharing << LEAF4_SHARING_SHIFT) & LEAF4_SHARING_MASK)
                    | (((span - 1) << LEAF4_CORES_SHIFT) & LEAF4_CORES_MASK);
            }
            0x6 => entry.ecx &= !LEAF6_ECX_EPB,
            // No virtual PMU is offered.
            0xa => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            // Extended topology, one sub-leaf per level: EAX the APIC id bits below the next
            // level, EBX the logical processors at this level, ECX level type and number, EDX
            // this vCPU's x2APIC id.
            0xb | 0x1f => {
                let (shift, count, level_type) = match entry.index {
                    0 => (0, 1, TOPOLOGY_LEVEL_SMT),
                    1 => (span.trailing_zeros(), u32::from(vcpu_count), TOPOLOGY_LEVEL_CORE),
                    // Level type 0 ends the list.
                    _ => (0, 0, 0),
                };
                entry.eax = shift;
                entry.ebx = count;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
                entry.edx = u32::from(apic_id);
            }
            _ => {}
        }
    }
}

/// Sets the filtered CPUID on `vcpu`.
pub fn setup(kvm: &Kvm, vcpu: &VcpuFd, apic_id: u8, vcpu_count: u8) -> Result<(), Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(Error::Cpuid)?;
    filter(&mut cpuid, apic_id, vcpu_count);
    vcpu.set_cpuid2(&cpuid).map_err(Error::Cpuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn subleaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        // Host-like values that must not survive: 64 cores, 2 threads each.
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 1,
            ebx: 128,
            ecx: 0x201,
            edx: 0xff,
            ..Default::default()
        }
    }

    #[test]
    fn extended_topology_is_one_package_of_single_thread_cores() {
        let entries = [subleaf(0xb, 0), subleaf(0xb, 1), subleaf(0xb, 2), subleaf(0x1f, 1)];
        let mut cpuid = CpuId::from_entries(&entries).expect("cpuid");
        filter(&mut cpuid, 2, 3);
        let e = cpuid.as_slice();
        let regs = |i: usize| (e[i].eax, e[i].ebx, e[i].ecx, e[i].edx);
        assert_eq!(regs(0), (0, 1, 0x100, 2), "SMT level: one thread, no id bits");
        assert_eq!(regs(1), (2, 3, 0x201, 2), "core level: 3 cores, 2 id bits");
        assert_eq!(regs(2), (0, 0, 0x2, 2), "end of the levels");
        assert_eq!(regs(3), (2, 3, 0x201, 2), "leaf 0x1f alike");
    }

    #[test]
    fn cache_leaf_counts_cores_and_sharing() {
        // Cache type 1 (data), level 1; and type 3 (unified), level 3; host: 64 cores, 128
        // threads sharing the L3. Then a type 0 entry (no more caches), left alone.
        let l1 = kvm_cpuid_entry2 {
            function: 4,
            eax: (63 << 26) | (1 << 14) | (1 << 5) | 1,
            ..Default::default()
        };
        let l3 = kvm_cpuid_entry2 {
            function: 4,
            index: 3,
            eax: (63 << 26) | (127 << 14) | (3 << 5) | 3,
            ..Default::default()
        };
        let end = kvm_cpuid_entry2 { function: 4, index: 4, eax: 0, ..Default::default() };
        let mut cpuid = CpuId::from_entries(&[l1, l3, end]).expect("cpuid");
        filter(&mut cpuid, 0, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].eax, (3 << 26) | (1 << 5) | 1, "L1: 4 cores, one thread per cache");
        assert_eq!(e[1].eax, (3 << 26) | (3 << 14) | (3 << 5) | 3, "L3: shared by 4");
        assert_eq!(e[2].eax, 0);
    }

    #[test]
    fn topology_is_set_per_vcpu() {
        let leaf = |function| kvm_cpuid_entry2 {
            function,
            ebx: 0xffff_ffff,
            edx: 0xffff_ffff,
            eax: 7,
            ..Default::default()
        };
        let mut cpuid = CpuId::from_entries(&[leaf(1), leaf(0xa), leaf(0xb)]).expect("cpuid");
        filter(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, (3 << 24) | (4 << 16) | (8 << 8));
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(e[1].eax, 0);
        assert_eq!(e[2].edx, 3);
    }
}
