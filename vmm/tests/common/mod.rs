//! Shared helpers for the KVM integration tests.

#![allow(dead_code)]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use bazaar_vmm::vm::{Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

/// Guest serial output collected in memory.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether KVM can be used here; prints a loud SKIPPED line for `test` when not.
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            bazaar_tests::skip::skip(test, &format!("/dev/kvm is not usable here ({e})"));
            false
        }
    }
}

/// A VM with `memory_mib` of RAM, COM1 captured, the i8042, and `code` at `load_addr`.
pub fn vm_with_code(irqchip: bool, code: &[u8], load_addr: u64) -> (Vm, Capture) {
    let vm = Vm::new(&VmConfig { memory_mib: 16, irqchip }).expect("create VM");
    let out = Capture::default();
    bazaar_vmm::legacy::attach(&vm, out.clone()).expect("legacy devices");
    vm.memory().write_slice(code, GuestAddress(load_addr)).expect("write guest code");
    (vm, out)
}

/// Points `vcpu` at real-mode code at `addr` (below 64 KiB), segments based at 0.
pub fn enter_real_mode(vcpu: &kvm_ioctls::VcpuFd, addr: u64) {
    let mut sregs = vcpu.get_sregs().expect("get sregs");
    for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
        seg.base = 0;
        seg.selector = 0;
    }
    vcpu.set_sregs(&sregs).expect("set sregs");
    let regs = kvm_bindings::kvm_regs { rip: addr, rflags: 0x2, rsp: 0x8000, ..Default::default() };
    vcpu.set_regs(&regs).expect("set regs");
}
