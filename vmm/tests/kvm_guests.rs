//! KVM integration tests: tiny hand-assembled guests run by the VMM, checking what it saw.
//! Each test skips (loudly) where /dev/kvm cannot be opened.

mod common;

use bazaar_vmm::boot;
use bazaar_vmm::exit::ExitReason;
use bazaar_vmm::vcpu::Exit;
use common::{enter_real_mode, kvm_usable, vm_with_code};
use vm_memory::{Bytes, GuestAddress};

const REAL_MODE_CODE_ADDR: u64 = 0x1000;
const LONG_MODE_CODE_ADDR: u64 = 0x10_0000;

/// Real mode: write "hi\n" to COM1, then halt.
const REAL_MODE_HI: &[u8] = &[
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'h', //       mov al, 'h'
    0xee, //             out dx, al
    0xb0, b'i', //       mov al, 'i'
    0xee, //             out dx, al
    0xb0, b'\n', //      mov al, '\n'
    0xee,  //             out dx, al
    0xf4,  //             hlt
];

/// Pulse the CPU reset line through the i8042 (real and long mode encode it alike).
const I8042_RESET: &[u8] = &[
    0xb0, 0xfe, //       mov al, 0xfe
    0xe6, 0x64, //       out 0x64, al
    0xf4, //             hlt (never reached: the VMM stops the vCPU)
];

/// Long mode: write "64\n" to COM1, store a 64-bit immediate at 0x5000, halt. `mov rbx,
/// imm64` and the REX.W store only decode this way in 64-bit mode.
const LONG_MODE_PROGRAM: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, //                 mov dx, 0x3f8
    0xb0, b'6', //                             mov al, '6'
    0xee, //                                   out dx, al
    0xb0, b'4', //                             mov al, '4'
    0xee, //                                   out dx, al
    0xb0, b'\n', //                            mov al, '\n'
    0xee,  //                                   out dx, al
    0x48, 0xbb, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // mov rbx, 0x1122334455667788
    0x48, 0x89, 0x1c, 0x25, 0x00, 0x50, 0x00, 0x00, //           mov [0x5000], rbx
    0xf4, //                                   hlt
];

#[test]
fn real_mode_guest_writes_to_serial() {
    if !kvm_usable("real_mode_guest_writes_to_serial") {
        return;
    }
    let (vm, out) = vm_with_code(false, REAL_MODE_HI, REAL_MODE_CODE_ADDR);
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    enter_real_mode(vcpu.fd(), REAL_MODE_CODE_ADDR);
    assert_eq!(vcpu.run().expect("run"), Exit::Halted);
    assert_eq!(out.text(), "hi\n");
}

#[test]
fn i8042_reset_stops_the_vm() {
    if !kvm_usable("i8042_reset_stops_the_vm") {
        return;
    }
    // With the in-kernel irqchip, so its creation is exercised too.
    let (vm, _out) = vm_with_code(true, I8042_RESET, REAL_MODE_CODE_ADDR);
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    enter_real_mode(vcpu.fd(), REAL_MODE_CODE_ADDR);
    assert_eq!(vcpu.run().expect("run"), Exit::Reset);
    assert_eq!(vm.exit_trigger().reason(), Some(ExitReason::Reset));
    assert_eq!(vm.exit_trigger().eventfd().read().expect("exit eventfd"), 1);
}

#[test]
fn long_mode_guest_set_up_by_the_boot_code() {
    if !kvm_usable("long_mode_guest_set_up_by_the_boot_code") {
        return;
    }
    let (vm, out) = vm_with_code(false, LONG_MODE_PROGRAM, LONG_MODE_CODE_ADDR);
    boot::regs::write_boot_tables(vm.memory()).expect("boot tables");
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    boot::setup_vcpu(vm.kvm(), vcpu.fd(), 0, 1, boot::Entry::Linux64(LONG_MODE_CODE_ADDR), false)
        .expect("setup");
    assert_eq!(vcpu.run().expect("run"), Exit::Halted);
    assert_eq!(out.text(), "64\n");
    let stored: u64 = vm.memory().read_obj(GuestAddress(0x5000)).expect("read");
    assert_eq!(stored, 0x1122_3344_5566_7788);
    let sregs = vcpu.fd().get_sregs().expect("sregs");
    assert_ne!(sregs.efer & (1 << 10), 0, "EFER.LMA set: long mode active");
    assert_eq!(sregs.cs.l, 1, "64-bit code segment");
}

#[test]
fn long_mode_guest_with_irqchip_resets() {
    if !kvm_usable("long_mode_guest_with_irqchip_resets") {
        return;
    }
    let (vm, _out) = vm_with_code(true, I8042_RESET, LONG_MODE_CODE_ADDR);
    boot::regs::write_boot_tables(vm.memory()).expect("boot tables");
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    // Full vCPU setup, LAPIC LINT pins included.
    boot::setup_vcpu(vm.kvm(), vcpu.fd(), 0, 1, boot::Entry::Linux64(LONG_MODE_CODE_ADDR), true)
        .expect("setup");
    assert_eq!(vcpu.run().expect("run"), Exit::Reset);
}
