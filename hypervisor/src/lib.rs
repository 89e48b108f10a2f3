//! The VM lifecycle behind one trait.
//!
//! The runtime owns a `Box<dyn Hypervisor>` per sandbox. A backend starts the VM and every helper
//! process it needs (for QEMU: a vhost-user vsock backend and virtiofsd), exposes the host end of
//! the guest's vsock as a Unix socket speaking the hybrid-vsock handshake, and stops everything it
//! started, by PID, when asked or when it notices the VM died.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod builtin;
pub mod console;
mod device_args;
pub mod hybrid_vsock;
mod lifecycle;
pub mod probe;
mod process;
pub mod qemu;
mod records;

pub use records::{kill_recorded, process_start_time};

/// How a backend should execute guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acceleration {
    /// Probe the host: KVM where it can run a Linux guest, software emulation otherwise.
    Auto,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation (TCG).
    Tcg,
}

/// Everything a backend needs to build one sandbox VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The sandbox id; used in process titles and log records.
    pub sandbox_id: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to the backend's own kernel command line.
    pub extra_kernel_params: String,
    /// A directory private to this sandbox, created by the runtime, where the backend puts its
    /// sockets and pid files. The backend removes what it created there on `stop`.
    pub run_dir: PathBuf,
    pub acceleration: Acceleration,
    /// Under software emulation (QEMU TCG): the size of the translated-code cache in MiB, `0`
    /// for the emulator's default. The cache is host memory that the VM keeps touching; a
    /// small guest's boot fits a small cache (`make bench` compares sizes).
    pub tcg_cache_mib: u32,
}

/// Devices cold-plugged before `start`.
#[derive(Debug, Clone)]
pub enum Device {
    /// A host directory shared with the guest over virtio-fs, mounted by the agent by `tag`.
    SharedFs { tag: String, host_dir: PathBuf },
    /// A virtio-net interface whose host side is an open tap device.
    Network(NetworkDevice),
}

/// A guest network interface backed by a tap device the runtime created.
#[derive(Debug, Clone)]
pub struct NetworkDevice {
    /// The tap's descriptor; the VMM process inherits a copy.
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
    /// The guest interface's MAC, "aa:bb:cc:dd:ee:ff": the pod interface's, so that the
    /// network's switches and neighbours keep the address they learned.
    pub mac: String,
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The VM process exited by itself (guest reset or power-off, or a crash) with this status.
    Exited { code: Option<i32>, signal: Option<i32> },
    /// `stop` ended it.
    Stopped,
}

/// The processes a backend started, recorded so that a later `containerd-shim-bazaar-v2 delete`
/// can end them by PID even when the shim that started them is gone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    pub pid: u32,
    /// Start time from /proc/<pid>/stat, so a recycled PID is never killed by mistake.
    pub start_time: u64,
}

#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// A short backend name for logs: "qemu", "builtin".
    fn name(&self) -> &'static str;

    /// Adds a device; only valid before `start`.
    fn add_device(&mut self, device: Device) -> anyhow::Result<()>;

    /// Starts the VM and its helpers. Returns once the VM runs and the agent socket accepts
    /// connections (the guest agent itself may still be booting).
    async fn start(&mut self) -> anyhow::Result<()>;

    /// Host Unix socket of the guest's vsock: connect, write `CONNECT <port>\n`, read
    /// `OK <port>\n`, then the stream is the guest connection.
    fn agent_socket(&self) -> PathBuf;

    /// Resolves when the VM has exited, for whatever reason.
    async fn wait(&self) -> VmExit;

    /// Holds `Some(exit)` once the VM has exited, for whatever reason: `wait` for a caller that
    /// must not keep the backend borrowed meanwhile (it sits behind a lock that `stop` needs).
    fn exit_receiver(&self) -> tokio::sync::watch::Receiver<Option<VmExit>>;

    /// Ends the VM and every helper process, by PID, and removes their sockets. Idempotent.
    async fn stop(&mut self) -> anyhow::Result<()>;

    /// The processes this backend started and still owns.
    fn processes(&self) -> Vec<ProcessRecord>;

    /// The PID of the process that runs the VM (QEMU's), while it runs. The host's stand-in for
    /// "the container's pid" where the host needs one (the state given to OCI hooks).
    fn vmm_pid(&self) -> Option<u32>;
}
