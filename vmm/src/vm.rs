//! The KVM VM: guest memory registered as memory slots, the in-kernel irqchip and PIT, the
//! port I/O and MMIO buses, and the exit trigger shared by devices and vCPUs.

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::exit::ExitTrigger;
use crate::memory::{self, GuestMemory};
use crate::vcpu::Vcpu;

/// Where KVM puts the three pages of the TSS it needs for real mode on Intel (below the
/// local APIC / IOAPIC area, inside the MMIO hole).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// What to build.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Create the in-kernel irqchip (PIC, IOAPIC, local APICs) and PIT. With it, KVM handles
    /// `hlt` itself (the vCPU sleeps until an interrupt), so a halting guest never exits.
    pub irqchip: bool,
}

/// Errors building or wiring the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening /dev/kvm failed.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The host KVM lacks a capability the VMM needs.
    #[error("the host KVM lacks the {0} capability")]
    MissingCap(&'static str),
    /// KVM_CREATE_VM failed.
    #[error("cannot create a KVM VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Guest memory could not be built.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// A memory slot could not be registered.
    #[error("cannot register guest memory slot {slot}: {source}")]
    MemorySlot {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_TSS_ADDR failed.
    #[error("cannot set the TSS address: {0}")]
    Tss(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("cannot create the in-kernel irqchip: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("cannot create the in-kernel PIT: {0}")]
    Pit(#[source] kvm_ioctls::Error),
    /// KVM_IRQFD failed.
    #[error("cannot connect an eventfd to GSI {gsi}: {source}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An interrupt was wired without an irqchip to deliver it.
    #[error("GSI {0} cannot be wired: the VM has no in-kernel irqchip")]
    NoIrqchip(u32),
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {id}: {source}")]
    CreateVcpu {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The exit eventfd could not be made.
    #[error("cannot create the exit eventfd: {0}")]
    ExitEvent(#[source] std::io::Error),
}

/// A KVM VM with its memory and buses.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    memory: GuestMemory,
    irqchip: bool,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: ExitTrigger,
}

impl Vm {
    /// Opens /dev/kvm, creates the VM, maps and registers guest memory, and (when asked) the
    /// irqchip and PIT. Must come before any vCPU is created.
    pub fn new(config: &VmConfig) -> Result<Self, Error> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        if !kvm.check_extension(Cap::UserMemory) {
            return Err(Error::MissingCap("KVM_CAP_USER_MEMORY"));
        }
        if config.irqchip && !kvm.check_extension(Cap::Irqchip) {
            return Err(Error::MissingCap("KVM_CAP_IRQCHIP"));
        }
        let fd = kvm.create_vm().map_err(Error::CreateVm)?;
        let memory = memory::create(config.memory_mib << 20)?;
        register_memory(&fd, &memory)?;
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(Error::Tss)?;
        if config.irqchip {
            fd.create_irq_chip().map_err(Error::Irqchip)?;
            let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
            fd.create_pit2(pit).map_err(Error::Pit)?;
        }
        Ok(Self {
            kvm,
            fd,
            memory,
            irqchip: config.irqchip,
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
            exit: ExitTrigger::new().map_err(Error::ExitEvent)?,
        })
    }

    /// The KVM system handle (supported CPUID, MSR lists).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Whether the VM has an in-kernel irqchip.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// The port I/O bus.
    pub fn pio_bus(&self) -> &Arc<Bus> {
        &self.pio
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Arc<Bus> {
        &self.mmio
    }

    /// The trigger devices fire to stop the VM, and vCPUs check.
    pub fn exit_trigger(&self) -> &ExitTrigger {
        &self.exit
    }

    /// Makes a write to `evt` raise interrupt line `gsi` in the in-kernel irqchip.
    pub fn register_irq(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        if !self.irqchip {
            return Err(Error::NoIrqchip(gsi));
        }
        self.fd.register_irqfd(evt, gsi).map_err(|source| Error::Irqfd { gsi, source })
    }

    /// Creates vCPU `id` (also its APIC id), attached to this VM's buses and exit trigger.
    pub fn create_vcpu(&self, id: u8) -> Result<Vcpu, Error> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|source| Error::CreateVcpu { id, source })?;
        Ok(Vcpu::new(id, fd, self.pio.clone(), self.mmio.clone(), self.exit.clone()))
    }
}

fn register_memory(fd: &VmFd, memory: &GuestMemory) -> Result<(), Error> {
    for (slot, region) in (0u32..).zip(memory.iter()) {
        let host = region.as_ptr() as u64;
        let slot_region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: the region is a live anonymous mapping of exactly `memory_size` bytes owned by
        // `memory`, which the `Vm` keeps for as long as the VM fd (and so the slot) exists.
        unsafe { fd.set_user_memory_region(slot_region) }
            .map_err(|source| Error::MemorySlot { slot, source })?;
    }
    Ok(())
}
