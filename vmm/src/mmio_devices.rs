//! Placing virtio-mmio devices in a VM: each gets the next 4 KiB slot of the MMIO hole and the
//! next free interrupt line, its queue eventfds become KVM ioeventfds on the QueueNotify
//! register, and the kernel learns of it from a `virtio_mmio.device=` parameter (no ACPI or
//! device tree needed).

use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use linux_loader::cmdline::Cmdline;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::mmio::{self, MmioTransport};
use crate::devices::virtio::VirtioDevice;
use crate::memory::{VIRTIO_MMIO_SLOT, VIRTIO_MMIO_START};
use crate::vm::Vm;

/// First interrupt line for virtio devices: 0-4 are the timer, keyboard, cascade and serial
/// ports of the legacy PC.
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// Last interrupt line: the in-kernel IOAPIC has 24 pins.
pub const LAST_VIRTIO_IRQ: u32 = 23;

/// Errors placing a device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every interrupt line is taken.
    #[error("no interrupt line is left for another virtio device ({0} are placed)")]
    OutOfIrqs(u32),
    /// The interrupt eventfd could not be made.
    #[error("cannot create a virtio interrupt eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Wiring the interrupt failed.
    #[error(transparent)]
    Irq(#[from] crate::vm::Error),
    /// A queue eventfd could not be registered.
    #[error("cannot register the notify eventfd of queue {queue} at {addr:#x}: {source}")]
    IoEvent {
        queue: usize,
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The slot is taken on the bus.
    #[error(transparent)]
    Bus(#[from] crate::bus::Error),
    /// The kernel command line is full.
    #[error("cannot declare the device on the kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
}

/// Hands out slots and interrupt lines, in order.
#[derive(Debug, Default)]
pub struct MmioDevices {
    placed: u32,
}

impl MmioDevices {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` in the next slot of `vm` and declares it on `cmdline`. Returns the slot's
    /// base address and interrupt line.
    pub fn attach<D: VirtioDevice + 'static>(
        &mut self,
        vm: &Vm,
        cmdline: &mut Cmdline,
        device: D,
    ) -> Result<(u64, u32), Error> {
        let irq = FIRST_VIRTIO_IRQ + self.placed;
        if irq > LAST_VIRTIO_IRQ {
            return Err(Error::OutOfIrqs(self.placed));
        }
        let base = VIRTIO_MMIO_START + u64::from(self.placed) * VIRTIO_MMIO_SLOT;
        let line = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irq(&line, irq)?;
        let notify = base + mmio::reg::QUEUE_NOTIFY;
        for (queue, event) in device.queue_events().iter().enumerate() {
            vm.fd()
                .register_ioevent(event, &IoEventAddress::Mmio(notify), queue as u32)
                .map_err(|source| Error::IoEvent { queue, addr: notify, source })?;
        }
        let transport = MmioTransport::new(device, vm.memory().clone(), Arc::new(line));
        vm.mmio_bus().insert(base, VIRTIO_MMIO_SLOT, Arc::new(Mutex::new(transport)))?;
        cmdline.insert_str(mmio::kernel_cmdline_param(base, irq)).map_err(Error::Cmdline)?;
        self.placed += 1;
        Ok((base, irq))
    }
}
