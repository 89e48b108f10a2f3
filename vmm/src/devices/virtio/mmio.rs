//! The virtio-mmio transport (virtio 1.2, section 4.2.2, version 2 register layout), generic
//! over the [`VirtioDevice`] it exposes. Declared to the guest kernel on its command line as
//! `virtio_mmio.device=<size>@<base>:<irq>`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::{InterruptLine, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::memory::GuestMemory;

/// "virt", little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern register layout.
pub const MMIO_VERSION: u32 = 2;
/// Reported vendor id.
pub const VENDOR_ID: u32 = 0;
/// Where the device configuration space starts.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 0x01;
    pub const DRIVER: u32 = 0x02;
    pub const DRIVER_OK: u32 = 0x04;
    pub const FEATURES_OK: u32 = 0x08;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// A virtio device behind the mmio register interface.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    memory: GuestMemory,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    interrupt_status: Arc<AtomicU32>,
    interrupt_line: Arc<dyn InterruptLine>,
    activated: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Exposes `device`, whose queues live in `memory` and which interrupts through `line`.
    /// Queue sizes the virtio-queue crate refuses (zero, not a power of two, over 32768) are
    /// reported to the driver as absent queues.
    pub fn new(device: D, memory: GuestMemory, line: Arc<dyn InterruptLine>) -> Self {
        let queues =
            device.queue_max_sizes().iter().filter_map(|&max| Queue::new(max).ok()).collect();
        Self {
            device,
            memory,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            interrupt_line: line,
            activated: false,
        }
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device status the driver wrote.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device was activated (the driver set DRIVER_OK with valid queues).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The interrupt handle a device (or a test) uses to raise an interrupt.
    pub fn interrupt(&self) -> VirtioInterrupt {
        VirtioInterrupt::new(self.interrupt_status.clone(), self.interrupt_line.clone())
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let index = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(index)
    }

    /// Applies `f` to the selected queue, unless the device is running (the driver may only
    /// configure queues before DRIVER_OK).
    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if self.status & status::DRIVER_OK != 0 {
            return;
        }
        if let Some(queue) = self.selected_queue() {
            f(queue);
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM => self.with_queue(|q| q.set_size(value as u16)),
            reg::QUEUE_READY => self.with_queue(|q| q.set_ready(value == 1)),
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            reg::QUEUE_DESC_HIGH => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_DRIVER_LOW => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_DRIVER_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_DEVICE_LOW => {
                self.with_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_DEVICE_HIGH => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            reg::QUEUE_NOTIFY if self.activated && (value as usize) < self.queues.len() => {
                self.device.queue_notify(value as u16);
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            reg::STATUS => self.write_status(value),
            _ => {}
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & status::FEATURES_OK != 0 {
            return;
        }
        let value = u64::from(value);
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let newly_set = value & !self.status;
        if newly_set & status::FEATURES_OK != 0 {
            let offered = self.offered_features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                // Leaving FEATURES_OK clear tells the driver the subset was refused.
                self.status = value & !status::FEATURES_OK;
                return;
            }
            self.device.ack_features(self.driver_features);
        }
        self.status = value;
        if newly_set & status::DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let ready = self.status & status::FEATURES_OK != 0
            && self.queues.iter().all(|q| q.ready() && q.is_valid(&self.memory));
        let queues: Option<Vec<Queue>> = self.queues.iter().map(copy_queue).collect();
        let result = match (ready, queues) {
            (true, Some(queues)) => {
                self.device.activate(self.memory.clone(), queues, self.interrupt()).map_err(|_| ())
            }
            _ => Err(()),
        };
        match result {
            Ok(()) => self.activated = true,
            Err(()) => {
                self.status |= status::DEVICE_NEEDS_RESET;
                // The driver learns of the failure from a configuration-change interrupt.
                let _ = self.interrupt().signal_config_change();
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.activated = false;
    }
}

/// A queue with the same configuration as `q` (`Queue` is not `Clone`): the device gets its
/// own, the transport keeps the one the driver's register reads see.
fn copy_queue(q: &Queue) -> Option<Queue> {
    let mut copy = Queue::new(q.max_size()).ok()?;
    let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
    copy.set_size(q.size());
    let (low, high) = split(q.desc_table());
    copy.set_desc_table_address(low, high);
    let (low, high) = split(q.avail_ring());
    copy.set_avail_ring_address(low, high);
    let (low, high) = split(q.used_ring());
    copy.set_used_ring_address(low, high);
    copy.set_event_idx(q.event_idx_enabled());
    copy.set_next_avail(q.next_avail());
    copy.set_next_used(q.next_used());
    copy.set_ready(q.ready());
    Some(copy)
}

/// The kernel parameter declaring a virtio-mmio device at `base` with interrupt `irq`
/// (needs `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
pub fn kernel_cmdline_param(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        // Registers are 32 bits wide and must be accessed as such.
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (dst, src) in data.iter_mut().zip(bytes.iter().chain(std::iter::repeat(&0))) {
            *dst = *src;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if let (Ok(bytes), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
