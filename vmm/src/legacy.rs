//! Wiring the legacy PC devices every guest gets: COM1 and the i8042 (for reset).

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::devices::i8042::{I8042, I8042_LEN, I8042_PORT};
use crate::devices::serial::{SerialDevice, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::devices::EventFdTrigger;
use crate::vm::Vm;

/// Errors wiring legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The serial interrupt eventfd could not be made.
    #[error("cannot create the serial interrupt eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A device's ports are taken.
    #[error(transparent)]
    Bus(#[from] crate::bus::Error),
    /// The serial interrupt could not be wired.
    #[error(transparent)]
    Irq(#[from] crate::vm::Error),
}

/// Puts COM1 (output to `out`, IRQ 4 when the VM has an irqchip) and the i8042 (reset fires
/// the VM's exit trigger) on the port I/O bus. Returns COM1 for console input.
pub fn attach<W: Write + Send + 'static>(
    vm: &Vm,
    out: W,
) -> Result<Arc<Mutex<SerialDevice<W>>>, Error> {
    let interrupt = EventFdTrigger::new().map_err(Error::EventFd)?;
    if vm.has_irqchip() {
        vm.register_irq(&interrupt.0, COM1_IRQ)?;
    }
    let serial = Arc::new(Mutex::new(SerialDevice::new(interrupt, out)));
    vm.pio_bus().insert(COM1_PORT, COM1_LEN, serial.clone())?;
    let i8042 = Arc::new(Mutex::new(I8042::new(vm.exit_trigger().clone())));
    vm.pio_bus().insert(I8042_PORT, I8042_LEN, i8042)?;
    Ok(serial)
}
