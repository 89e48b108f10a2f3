//! The 8250 UART at COM1, backed by vm-superio; what the guest transmits goes to an
//! [`io::Write`](std::io::Write).

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// COM1's I/O port base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's ports.
pub const COM1_LEN: u64 = 8;
/// COM1's legacy IRQ.
pub const COM1_IRQ: u32 = 4;

/// An 8250 UART on the port I/O bus.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<EventFdTrigger, NoEvents, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    /// A UART raising `interrupt` and writing guest output to `out`.
    pub fn new(interrupt: EventFdTrigger, out: W) -> Self {
        Self { uart: Serial::new(interrupt, out) }
    }

    /// Queues bytes for the guest to read (console input).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// The output sink.
    pub fn writer(&self) -> &W {
        self.uart.writer()
    }

    /// The interrupt line.
    pub fn interrupt(&self) -> &EventFdTrigger {
        self.uart.interrupt_evt()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART's registers are one byte wide; wider accesses read the first register only.
        data.fill(0);
        if let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // An output error (closed stdout) loses console bytes but must not stop the guest.
            let _ = self.uart.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let mut dev = SerialDevice::new(EventFdTrigger::new().expect("eventfd"), Vec::new());
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(dev.writer().as_slice(), b"ok\n");
    }

    #[test]
    fn line_status_reports_an_empty_transmitter() {
        let mut dev = SerialDevice::new(EventFdTrigger::new().expect("eventfd"), Vec::new());
        let mut lsr = [0u8; 1];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "THRE and TEMT set");
    }

    #[test]
    fn input_is_readable_and_interrupts_when_enabled() {
        let mut dev = SerialDevice::new(EventFdTrigger::new().expect("eventfd"), Vec::new());
        dev.write(1, &[0x01]); // IER: received-data-available interrupt on
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert_eq!(dev.interrupt().0.read().expect("interrupt raised"), 1);
        let mut rbr = [0u8; 1];
        dev.read(0, &mut rbr);
        assert_eq!(&rbr, b"x");
    }
}
