//! A vCPU and its run loop: KVM exits for port I/O and MMIO are dispatched to the buses; the
//! loop returns a small [`Exit`] when the guest halts (no irqchip), resets or powers off.

use std::sync::Arc;

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::exit::{ExitReason, ExitTrigger};

/// Why [`Vcpu::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The vCPU executed `hlt` (only seen without an in-kernel irqchip).
    Halted,
    /// The VM is to reset: a device fired the exit trigger, the guest triple-faulted, or KVM
    /// reported a reset system event.
    Reset,
    /// The VM powered off.
    PowerOff,
}

impl From<ExitReason> for Exit {
    fn from(reason: ExitReason) -> Self {
        match reason {
            ExitReason::Reset => Exit::Reset,
            ExitReason::PowerOff => Exit::PowerOff,
        }
    }
}

/// Errors running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_RUN failed.
    #[error("KVM_RUN failed on vCPU {id}: {source}")]
    Run {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM could not enter the guest.
    #[error("vCPU {id}: VM entry failed, hardware reason {reason:#x}")]
    FailEntry { id: u8, reason: u64 },
    /// KVM hit an internal error (on emulation-based KVMs: an instruction it cannot emulate).
    #[error("vCPU {id}: KVM internal error")]
    Internal { id: u8 },
    /// An exit the VMM does not handle.
    #[error("vCPU {id}: unexpected exit {exit}")]
    Unexpected { id: u8, exit: String },
}

/// One vCPU of a [`Vm`](crate::vm::Vm).
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: ExitTrigger,
}

impl Vcpu {
    pub(crate) fn new(
        id: u8,
        fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: ExitTrigger,
    ) -> Self {
        Self { id, fd, pio, mmio, exit }
    }

    /// The vCPU index (also its APIC id).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The KVM vCPU, to set registers.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the guest until it halts, resets or powers off. A reset or power-off is also
    /// recorded in the VM's exit trigger, so that other vCPUs and the main thread see it.
    pub fn run(&mut self) -> Result<Exit, Error> {
        let id = self.id;
        loop {
            if let Some(reason) = self.exit.reason() {
                return Ok(reason.into());
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(source) => return Err(Error::Run { id, source }),
            };
            match exit {
                VcpuExit::IoIn(port, data) => {
                    self.pio.read(u64::from(port), data);
                }
                VcpuExit::IoOut(port, data) => {
                    self.pio.write(u64::from(port), data);
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.mmio.read(addr, data);
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.mmio.write(addr, data);
                }
                VcpuExit::Hlt => return Ok(Exit::Halted),
                // A triple fault: what a PC does next is reset.
                VcpuExit::Shutdown => return Ok(self.stop(ExitReason::Reset)),
                VcpuExit::SystemEvent(kind, _) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => return Ok(self.stop(ExitReason::PowerOff)),
                    KVM_SYSTEM_EVENT_RESET => return Ok(self.stop(ExitReason::Reset)),
                    other => {
                        return Err(Error::Unexpected { id, exit: format!("system event {other}") })
                    }
                },
                VcpuExit::Intr => {}
                VcpuExit::FailEntry(reason, _) => return Err(Error::FailEntry { id, reason }),
                VcpuExit::InternalError => return Err(Error::Internal { id }),
                other => return Err(Error::Unexpected { id, exit: format!("{other:?}") }),
            }
        }
    }

    /// Records `reason` for the whole VM and returns the exit the trigger now holds.
    fn stop(&self, reason: ExitReason) -> Exit {
        // The eventfd only wakes a waiter; the reason is recorded even if writing it fails.
        let _ = self.exit.fire(reason);
        self.exit.reason().unwrap_or(reason).into()
    }
}
