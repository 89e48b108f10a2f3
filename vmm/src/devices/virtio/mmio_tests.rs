//! Register-level tests of the virtio-mmio transport, driving it as a guest driver would,
//! with queues in guest memory built here.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::*;
use crate::devices::virtio::test_utils::CountingLine;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};

const DUMMY_FEATURE: u64 = 1 << 5;

#[derive(Default)]
struct Dummy {
    acked: u64,
    config: [u8; 8],
    queues: Vec<Queue>,
    interrupt: Option<VirtioInterrupt>,
    notified: Vec<u16>,
    resets: u32,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        DUMMY_FEATURE
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        if let Some(src) = self.config.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let start = offset as usize;
        if let Some(dst) = self.config.get_mut(start..start + data.len()) {
            dst.copy_from_slice(data);
        }
    }
    fn activate(
        &mut self,
        _memory: GuestMemory,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        self.queues = queues;
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn queue_notify(&mut self, index: u16) {
        self.notified.push(index);
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.queues.clear();
    }
}

fn transport() -> (MmioTransport<Dummy>, Arc<CountingLine>) {
    let memory = crate::memory::create(1 << 20).expect("guest memory");
    let line = Arc::new(CountingLine::default());
    (MmioTransport::new(Dummy::default(), memory, line.clone()), line)
}

fn r(t: &mut MmioTransport<Dummy>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn w(t: &mut MmioTransport<Dummy>, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// ACKNOWLEDGE, DRIVER, features (VERSION_1 + the dummy's), FEATURES_OK.
fn negotiate(t: &mut MmioTransport<Dummy>) {
    w(t, reg::STATUS, status::ACKNOWLEDGE);
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, DUMMY_FEATURE as u32);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, 1); // VERSION_1
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
}

/// Queue `index` of `size` entries at a distinct, aligned place in guest memory.
fn setup_queue(t: &mut MmioTransport<Dummy>, index: u32, size: u32) {
    let base = 0x1_0000 * (index + 1);
    w(t, reg::QUEUE_SEL, index);
    w(t, reg::QUEUE_NUM, size);
    w(t, reg::QUEUE_DESC_LOW, base);
    w(t, reg::QUEUE_DESC_HIGH, 0);
    w(t, reg::QUEUE_DRIVER_LOW, base + 0x1000);
    w(t, reg::QUEUE_DRIVER_HIGH, 0);
    w(t, reg::QUEUE_DEVICE_LOW, base + 0x2000);
    w(t, reg::QUEUE_DEVICE_HIGH, 0);
    w(t, reg::QUEUE_READY, 1);
}

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identification_registers() {
    let (mut t, _) = transport();
    assert_eq!(r(&mut t, reg::MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, reg::VERSION), 2);
    assert_eq!(r(&mut t, reg::DEVICE_ID), 4);
    assert_eq!(r(&mut t, reg::VENDOR_ID), 0);
}

#[test]
fn narrow_or_misaligned_register_access_is_ignored() {
    let (mut t, _) = transport();
    let mut two = [0xaau8; 2];
    t.read(reg::MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    t.write(reg::STATUS + 1, &[1, 0, 0, 0]);
    t.write(reg::STATUS, &[1]);
    assert_eq!(r(&mut t, reg::STATUS), 0);
}

#[test]
fn device_features_are_banked_and_include_version_1() {
    let (mut t, _) = transport();
    w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), DUMMY_FEATURE as u32);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
}

#[test]
fn accepted_features_reach_the_device() {
    let (mut t, _) = transport();
    negotiate(&mut t);
    assert_ne!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    assert_eq!(t.device().acked, DUMMY_FEATURE | VIRTIO_F_VERSION_1);
}

#[test]
fn unoffered_features_or_no_version_1_are_refused() {
    let (mut t, _) = transport();
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    w(&mut t, reg::DRIVER_FEATURES, (DUMMY_FEATURE | 1 << 7) as u32);
    w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    w(&mut t, reg::DRIVER_FEATURES, 1);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0, "bit 7 was never offered");

    let (mut t, _) = transport();
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, reg::DRIVER_FEATURES, DUMMY_FEATURE as u32);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0, "legacy driver");
    assert_eq!(t.device().acked, 0);
}

#[test]
fn queue_registers_configure_the_selected_queue() {
    let (mut t, _) = transport();
    w(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 8);
    w(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 16);
    w(&mut t, reg::QUEUE_SEL, 2);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0, "no third queue");
    setup_queue(&mut t, 0, 16);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    let q = &t.queues[0];
    assert_eq!(
        (q.size(), q.desc_table(), q.avail_ring(), q.used_ring()),
        (16, 0x1_0000, 0x1_1000, 0x1_2000)
    );
    w(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
}

#[test]
fn driver_ok_activates_with_the_queues_and_notifies_pass_through() {
    let (mut t, _) = transport();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 16);
    setup_queue(&mut t, 1, 8);
    w(&mut t, reg::QUEUE_NOTIFY, 0);
    assert!(t.device().notified.is_empty(), "not active yet");
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(t.is_activated());
    assert_eq!(t.device().queues.len(), 2);
    assert_eq!(t.device().queues[1].desc_table(), 0x2_0000);
    w(&mut t, reg::QUEUE_NOTIFY, 1);
    w(&mut t, reg::QUEUE_NOTIFY, 9);
    assert_eq!(t.device().notified, vec![1]);
    // Queues cannot be changed while running.
    w(&mut t, reg::QUEUE_SEL, 0);
    w(&mut t, reg::QUEUE_NUM, 4);
    assert_eq!(t.queues[0].size(), 16);
}

#[test]
fn driver_ok_with_a_missing_queue_needs_reset() {
    let (mut t, line) = transport();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 16);
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(!t.is_activated());
    assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0x2, "configuration-change interrupt");
    assert_eq!(line.count(), 1);
}

#[test]
fn interrupts_set_status_raise_the_line_and_are_acked() {
    let (mut t, line) = transport();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 16);
    setup_queue(&mut t, 1, 8);
    w(&mut t, reg::STATUS, ALL_OK);
    let irq = t.device().interrupt.clone().expect("activated");
    irq.signal_used_queue().expect("raise");
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0x1);
    assert_eq!(line.count(), 1);
    irq.signal_config_change().expect("raise");
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0x3);
    w(&mut t, reg::INTERRUPT_ACK, 0x1);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0x2);
    w(&mut t, reg::INTERRUPT_ACK, 0x2);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn writing_status_zero_resets_everything() {
    let (mut t, _) = transport();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 16);
    setup_queue(&mut t, 1, 8);
    w(&mut t, reg::STATUS, ALL_OK);
    w(&mut t, reg::STATUS, 0);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    assert!(!t.is_activated());
    assert_eq!(t.device().resets, 1);
    w(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(t.queues[0].desc_table(), 0);
}

#[test]
fn config_space_is_the_device_s() {
    let (mut t, _) = transport();
    t.write(CONFIG_SPACE_OFFSET + 2, &[0xab, 0xcd]);
    let mut data = [0u8; 4];
    t.read(CONFIG_SPACE_OFFSET, &mut data);
    assert_eq!(data, [0, 0, 0xab, 0xcd]);
    assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 0);
}

#[test]
fn kernel_parameter_declares_the_device() {
    assert_eq!(kernel_cmdline_param(0xc000_0000, 5), "virtio_mmio.device=4K@0xc0000000:5");
}
