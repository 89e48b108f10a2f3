//! Bazaar's built-in KVM VMM, built on the rust-vmm crates.
//!
//! The pieces, bottom up:
//! - [`memory`]: guest RAM (vm-memory) and the guest physical address layout;
//! - [`vm`]: the KVM VM (memory slots, in-kernel irqchip, PIT);
//! - [`bus`]: address ranges mapped to device models, one bus for port I/O and one for MMIO;
//! - [`vcpu`]: a vCPU's run loop, which dispatches I/O exits to the buses;
//! - [`devices`]: the device models (8250 serial, i8042, virtio-mmio transport, virtio-vsock,
//!   virtio-fs through vhost-user, virtio-net over a tap, virtio-blk over a file);
//! - [`boot`]: loading a Linux kernel and putting a vCPU in the state its entry point expects;
//! - [`exit`]: how a device asks the VM to stop (reset, power-off);
//! - [`legacy`]: wiring COM1 and the i8042 into a VM;
//! - [`seccomp`]: the system call filter each kind of VMM thread installs.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod boot;
pub mod bus;
pub mod devices;
pub mod exit;
pub mod legacy;
pub mod machine;
pub mod memory;
pub mod mmio_devices;
pub mod seccomp;
pub mod vcpu;
pub mod vm;
