//! KVM integration test of virtio-mmio placement: a hand-made guest writes the QueueNotify
//! register of a device placed by `MmioDevices`, and the write reaches the device's queue
//! eventfd through KVM (an ioeventfd) without the VMM in the path. Skips loudly without
//! /dev/kvm.

mod common;

use bazaar_vmm::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};
use bazaar_vmm::memory::{GuestMemory, VIRTIO_MMIO_START};
use bazaar_vmm::mmio_devices::{MmioDevices, FIRST_VIRTIO_IRQ};
use bazaar_vmm::vcpu::Exit;
use common::{enter_real_mode, kvm_usable, vm_with_code};
use linux_loader::cmdline::Cmdline;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const CODE_ADDR: u64 = 0x1000;

/// Real mode with 4 GiB data segment limits ("unreal mode"), so 32-bit addresses reach the
/// MMIO hole: notify queue 1, then queue 0, of the device at 0xc0000000, then reset through
/// the i8042 (with the in-kernel irqchip a `hlt` would never come back to the VMM).
const NOTIFY_QUEUES: &[u8] = &[
    0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, //       mov eax, 1
    0x66, 0x67, 0xa3, 0x50, 0x00, 0x00, 0xc0, // mov [0xc0000050], eax
    0x66, 0x31, 0xc0, //                         xor eax, eax
    0x66, 0x67, 0xa3, 0x50, 0x00, 0x00, 0xc0, // mov [0xc0000050], eax
    0xb0, 0xfe, //                               mov al, 0xfe
    0xe6, 0x64, //                               out 0x64, al
];

/// A device with two queues whose notifications go to eventfds; it records nothing else.
struct TwoQueues {
    events: Vec<EventFd>,
}

impl VirtioDevice for TwoQueues {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8, 8]
    }
    fn features(&self) -> u64 {
        0
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        _memory: GuestMemory,
        _queues: Vec<Queue>,
        _interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        Ok(())
    }
    fn queue_notify(&mut self, _index: u16) {
        panic!("the notification went through the VMM, not the ioeventfd");
    }
    fn reset(&mut self) {}
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
}

#[test]
fn queue_notify_reaches_the_device_eventfd_through_kvm() {
    if !kvm_usable("queue_notify_reaches_the_device_eventfd_through_kvm") {
        return;
    }
    let (vm, _serial) = vm_with_code(true, NOTIFY_QUEUES, CODE_ADDR);
    let events: Vec<EventFd> =
        (0..2).map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd")).collect();
    let copies: Vec<EventFd> = events.iter().map(|e| e.try_clone().expect("clone")).collect();
    let mut cmdline = Cmdline::new(256).expect("cmdline");
    let (base, irq) = MmioDevices::new()
        .attach(&vm, &mut cmdline, TwoQueues { events })
        .expect("attach the device");
    assert_eq!((base, irq), (VIRTIO_MMIO_START, FIRST_VIRTIO_IRQ));
    let cmdline = cmdline.as_cstring().expect("cmdline").into_string().expect("utf-8");
    assert_eq!(cmdline, "virtio_mmio.device=4K@0xc0000000:5");

    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    enter_real_mode(vcpu.fd(), CODE_ADDR);
    let mut sregs = vcpu.fd().get_sregs().expect("sregs");
    sregs.ds.limit = 0xffff_ffff;
    sregs.ds.g = 1;
    vcpu.fd().set_sregs(&sregs).expect("unreal mode");
    assert_eq!(vcpu.run().expect("run"), Exit::Reset);
    let counts: Vec<u64> = copies.iter().map(|e| e.read().unwrap_or(0)).collect();
    assert_eq!(counts, [1, 1], "each queue's eventfd is written once");
}
