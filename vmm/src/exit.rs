//! How a device asks the VM to stop, and how vCPUs and the main thread learn of it.
//!
//! A device holds an [`ExitTrigger`] (for example the i8042 on a CPU-reset command). Triggering
//! records the reason in state shared with every vCPU, which checks it after each exit it
//! handles, and writes an eventfd the VMM's main thread can wait on.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM is to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 pulse, triple fault, KVM system event).
    Reset,
    /// The guest powered off.
    PowerOff,
}

const NONE: u8 = 0;
const RESET: u8 = 1;
const POWER_OFF: u8 = 2;

/// Shared record of a requested VM exit plus an eventfd to wake a waiter.
#[derive(Debug, Clone)]
pub struct ExitTrigger {
    reason: Arc<AtomicU8>,
    evt: Arc<EventFd>,
}

impl ExitTrigger {
    /// A trigger nothing has fired yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Arc::new(AtomicU8::new(NONE)),
            evt: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    /// Records `reason` (the first reason wins) and wakes the waiter.
    pub fn fire(&self, reason: ExitReason) -> std::io::Result<()> {
        let code = match reason {
            ExitReason::Reset => RESET,
            ExitReason::PowerOff => POWER_OFF,
        };
        let _ = self.reason.compare_exchange(NONE, code, Ordering::SeqCst, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The reason recorded, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        match self.reason.load(Ordering::SeqCst) {
            RESET => Some(ExitReason::Reset),
            POWER_OFF => Some(ExitReason::PowerOff),
            _ => None,
        }
    }

    /// The eventfd written on each [`fire`](Self::fire); readable once an exit was requested.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// Lets vm-superio devices (i8042) fire a reset.
impl vm_superio::Trigger for ExitTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.fire(ExitReason::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let t = ExitTrigger::new().expect("eventfd");
        assert_eq!(t.reason(), None);
        t.fire(ExitReason::PowerOff).expect("fire");
        t.clone().fire(ExitReason::Reset).expect("fire");
        assert_eq!(t.reason(), Some(ExitReason::PowerOff));
        assert_eq!(t.eventfd().read().expect("readable"), 2);
    }
}
