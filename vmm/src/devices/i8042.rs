//! The i8042 keyboard controller, only so far as the guest uses it to reset the machine: a
//! CPU-reset command (0xfe written to port 0x64) fires an exit trigger.

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;

/// The i8042's first port (data); the command/status port is at +4 (0x64).
pub const I8042_PORT: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

/// The i8042 on the port I/O bus.
pub struct I8042<T: Trigger + Send> {
    inner: I8042Device<T>,
}

impl<T: Trigger + Send> I8042<T> {
    /// An i8042 that fires `reset` when the guest pulses the CPU reset line.
    pub fn new(reset: T) -> Self {
        Self { inner: I8042Device::new(reset) }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // The trigger's own failure (a full eventfd) still leaves the reason recorded.
            let _ = self.inner.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{ExitReason, ExitTrigger};

    #[test]
    fn reset_command_fires_the_trigger() {
        let exit = ExitTrigger::new().expect("eventfd");
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[0xfe]); // data port: not a command
        assert_eq!(exit.reason(), None);
        dev.write(4, &[0xaa]); // another command
        assert_eq!(exit.reason(), None);
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
