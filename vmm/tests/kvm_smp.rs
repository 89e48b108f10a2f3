//! Several vCPUs under KVM with the in-kernel irqchip: application processors wait for
//! INIT/SIPI, and a boot processor that sends them starts one. Each test skips (loudly) where
//! /dev/kvm cannot be opened.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use bazaar_vmm::boot::{self, layout};
use bazaar_vmm::exit::ExitReason;
use bazaar_vmm::vcpu::Exit;
use common::{kvm_usable, vm_with_code};
use kvm_bindings::{KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use vm_memory::{Bytes, GuestAddress};

const BSP_CODE_ADDR: u64 = 0x10_0000;
/// Where the AP starts: the SIPI vector is the page number of its real-mode entry.
const SIPI_VECTOR: u8 = 0x03;
const AP_CODE_ADDR: u64 = (SIPI_VECTOR as u64) << 12;
/// A page directory for the 3-4 GiB range, after the boot page tables.
const HIGH_PD_ADDR: u64 = 0xc000;
const LAPIC_ADDR: u64 = 0xfee0_0000;
/// How long the two vCPUs get to run the handshake (it takes milliseconds).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Local APIC registers (offsets from its base) and ICR bits.
const APIC_SVR: u32 = 0xf0;
const APIC_ICR_LOW: u32 = 0x300;
const APIC_ICR_HIGH: u32 = 0x310;
const SVR_APIC_ENABLED: u32 = 0x100;
const ICR_INIT: u32 = 0x500;
const ICR_STARTUP: u32 = 0x600;
const ICR_ASSERT: u32 = 0x4000;

/// `mov dword [rax + offset], value`.
fn store_at_rax(offset: u32, value: u32) -> Vec<u8> {
    let mut code = vec![0xc7, 0x80];
    code.extend(offset.to_le_bytes());
    code.extend(value.to_le_bytes());
    code
}

/// Long mode, on vCPU 0: enable the local APIC, send INIT, SIPI, SIPI to APIC id 1, then exit
/// to the VMM in a loop (`out 0x80`) so that its run loop sees the reset the AP asks for.
fn bsp_sends_init_sipi_sipi() -> Vec<u8> {
    let mut code = vec![0xb8]; // mov eax, imm32 (zero-extended into rax)
    code.extend((LAPIC_ADDR as u32).to_le_bytes());
    code.extend(store_at_rax(APIC_SVR, SVR_APIC_ENABLED | 0xff)); // spurious vector 0xff
    code.extend(store_at_rax(APIC_ICR_HIGH, 1 << 24)); // destination: APIC id 1
    code.extend(store_at_rax(APIC_ICR_LOW, ICR_INIT | ICR_ASSERT));
    // The startup IPI twice, as the MP specification's protocol has it.
    for _ in 0..2 {
        let sipi = ICR_STARTUP | ICR_ASSERT | u32::from(SIPI_VECTOR);
        code.extend(store_at_rax(APIC_ICR_LOW, sipi));
    }
    code.extend([0xe6, 0x80, 0xeb, 0xfc]); // out 0x80, al; jmp back to the out
    code
}

/// Real mode, on vCPU 1 after the SIPI: write "ap\n" to COM1, then reset through the i8042.
const AP_WRITES_AND_RESETS: &[u8] = &[
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'a', 0xee, // mov al, 'a'; out dx, al
    0xb0, b'p', 0xee, // mov al, 'p'; out dx, al
    0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
    0xb0, 0xfe, //       mov al, 0xfe
    0xe6, 0x64, //       out 0x64, al: CPU reset
    0xf4, //             hlt (never reached)
];

/// Maps the local APIC's page (2 MiB, uncached) into the boot identity map, which covers only
/// the first GiB.
fn map_local_apic(vm: &bazaar_vmm::vm::Vm) {
    const PRESENT_WRITABLE: u64 = 0x3;
    const LARGE_UNCACHED: u64 = 0x80 | 0x10;
    let mem = vm.memory();
    let pdpt_entry = layout::PDPT_ADDR + 8 * (LAPIC_ADDR >> 30);
    mem.write_obj(HIGH_PD_ADDR | PRESENT_WRITABLE, GuestAddress(pdpt_entry)).expect("PDPT");
    let pd_entry = HIGH_PD_ADDR + 8 * ((LAPIC_ADDR >> 21) & 0x1ff);
    let pde = LAPIC_ADDR | PRESENT_WRITABLE | LARGE_UNCACHED;
    mem.write_obj(pde, GuestAddress(pd_entry)).expect("PD");
}

#[test]
fn application_processor_waits_for_init_sipi() {
    if !kvm_usable("application_processor_waits_for_init_sipi") {
        return;
    }
    let (vm, _out) = vm_with_code(true, &[0xf4], BSP_CODE_ADDR);
    boot::regs::write_boot_tables(vm.memory()).expect("boot tables");
    let bsp = vm.create_vcpu(0).expect("vcpu 0");
    let ap = vm.create_vcpu(1).expect("vcpu 1");
    for vcpu in [&bsp, &ap] {
        boot::setup_vcpu(
            vm.kvm(),
            vcpu.fd(),
            vcpu.id(),
            2,
            boot::Entry::Linux64(BSP_CODE_ADDR),
            true,
        )
        .expect("setup");
    }
    let state = |v: &bazaar_vmm::vcpu::Vcpu| v.fd().get_mp_state().expect("mp state").mp_state;
    assert_eq!(state(&bsp), KVM_MP_STATE_RUNNABLE);
    assert_eq!(state(&ap), KVM_MP_STATE_UNINITIALIZED);
    let lma = |v: &bazaar_vmm::vcpu::Vcpu| v.fd().get_sregs().expect("sregs").efer & (1 << 10);
    assert_ne!(lma(&bsp), 0, "the boot vCPU enters in long mode");
    assert_eq!(lma(&ap), 0, "the AP keeps its reset state: INIT would reset it anyway");
    assert_eq!(bsp.fd().get_regs().expect("regs").rip, BSP_CODE_ADDR);
}

#[test]
fn secondary_vcpu_without_irqchip_is_refused() {
    if !kvm_usable("secondary_vcpu_without_irqchip_is_refused") {
        return;
    }
    let (vm, _out) = vm_with_code(false, &[0xf4], BSP_CODE_ADDR);
    let ap = vm.create_vcpu(1).expect("vcpu 1");
    let err = boot::setup_vcpu(vm.kvm(), ap.fd(), 1, 2, boot::Entry::Linux64(BSP_CODE_ADDR), false);
    assert!(matches!(err, Err(boot::Error::SecondaryWithoutIrqchip(1))), "{err:?}");
}

#[test]
fn boot_processor_starts_an_ap_with_init_sipi_sipi() {
    if !kvm_usable("boot_processor_starts_an_ap_with_init_sipi_sipi") {
        return;
    }
    let (vm, out) = vm_with_code(true, &bsp_sends_init_sipi_sipi(), BSP_CODE_ADDR);
    vm.memory().write_slice(AP_WRITES_AND_RESETS, GuestAddress(AP_CODE_ADDR)).expect("AP code");
    boot::regs::write_boot_tables(vm.memory()).expect("boot tables");
    map_local_apic(&vm);

    // Every vCPU exists before any runs: an IPI to an APIC id KVM does not have yet is lost.
    let vcpus: Vec<_> = (0..2)
        .map(|id| {
            let vcpu = vm.create_vcpu(id).expect("vcpu");
            boot::setup_vcpu(vm.kvm(), vcpu.fd(), id, 2, boot::Entry::Linux64(BSP_CODE_ADDR), true)
                .expect("setup");
            vcpu
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    for mut vcpu in vcpus {
        let (id, tx) = (vcpu.id(), tx.clone());
        thread::spawn(move || {
            let _ = tx.send((id, vcpu.run()));
        });
    }
    let mut ended = Vec::new();
    for _ in 0..2 {
        match rx.recv_timeout(HANDSHAKE_TIMEOUT) {
            Ok((id, result)) => ended.push((id, result.expect("vcpu run"))),
            Err(_) => {
                // Stops the boot vCPU at its next exit; an AP that never started stays
                // parked in KVM until the test process ends.
                let _ = vm.exit_trigger().fire(ExitReason::PowerOff);
                panic!(
                    "the AP did not reset the VM within {HANDSHAKE_TIMEOUT:?}; stopped: \
                     {ended:?}; console: {:?}",
                    out.text()
                );
            }
        }
    }
    ended.sort_by_key(|(id, _)| *id);
    assert_eq!(ended, [(0, Exit::Reset), (1, Exit::Reset)]);
    assert_eq!(out.text(), "ap\n", "written by the AP's real-mode code");
}
