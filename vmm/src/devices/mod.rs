//! Device models. Each one depends on its own contract (the [`BusDevice`](crate::bus::BusDevice)
//! trait, an interrupt [`Trigger`](vm_superio::Trigger), guest memory), never on the VM type.

pub mod i8042;
pub mod serial;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line as an eventfd (registered with KVM as an irqfd when there is an irqchip).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl EventFdTrigger {
    /// A fresh, non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?))
    }
}
