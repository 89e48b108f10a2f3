//! The CPUID a vCPU sees: what KVM supports, with the topology fields set for this vCPU and
//! features the VMM does not offer masked out.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use super::Error;

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package (HTT).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 ECX: performance-energy bias hint (an MSR the VMM does not emulate).
const LEAF6_ECX_EPB: u32 = 1 << 3;

/// Adjusts KVM's supported CPUID for vCPU `apic_id` of `vcpu_count`.
pub fn filter(cpuid: &mut CpuId, apic_id: u8, vcpu_count: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                // EBX: APIC id [31:24], logical processors [23:16], CLFLUSH line / 8 [15:8].
                entry.ebx = (u32::from(apic_id) << 24) | (u32::from(vcpu_count) << 16) | (8 << 8);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if vcpu_count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x6 => entry.ecx &= !LEAF6_ECX_EPB,
            // No virtual PMU is offered.
            0xa => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            // Extended topology: x2APIC id of this vCPU.
            0xb | 0x1f => entry.edx = u32::from(apic_id),
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
