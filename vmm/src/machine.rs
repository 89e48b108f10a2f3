//! One VM from a [`MachineConfig`]: memory, legacy devices, virtio devices, the kernel, and
//! the vCPU threads; [`run`] returns when the guest resets or powers off.
//!
//! Boot is instrumented on stderr ("bazaar-vmm: boot: ..." lines, milliseconds since the VMM
//! started): setup done and vCPU 0 entering the kernel, then the first console output. The
//! runtime's backend logs these per sandbox.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use linux_loader::cmdline::Cmdline;

use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::VhostUserFs;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::vsock::Vsock;
use crate::mmio_devices::MmioDevices;
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::{self, Exit};
use crate::vm::{Vm, VmConfig};
use crate::{boot, legacy};

/// The VMM's own kernel parameters: serial console, reboot through the keyboard controller
/// (the i8042 reset ends the VM), no PCI probing (devices are virtio-mmio), and an i8042
/// driver that does not probe for a mouse or a real keyboard.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// What to build.
#[derive(Debug)]
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to [`BASE_CMDLINE`] and the device parameters.
    pub cmdline: Option<String>,
    pub memory_mib: u64,
    pub vcpus: u8,
    pub devices: Vec<DeviceConfig>,
    /// What the threads' seccomp filters do with a system call they do not allow.
    pub seccomp: seccomp::Mode,
}

/// A virtio device to attach.
#[derive(Debug)]
pub enum DeviceConfig {
    /// virtio-fs named `tag`, served by the vhost-user backend listening at `socket`.
    Fs { tag: String, socket: PathBuf },
    /// virtio-vsock with context id `cid`, whose host side is the hybrid-vsock socket `socket`.
    Vsock { cid: u64, socket: PathBuf },
    /// virtio-net on the tap open as descriptor `tap_fd`, inherited from the VMM's parent
    /// (`run` takes ownership of it), with the guest MAC `mac`.
    Net { tap_fd: RawFd, mac: [u8; 6] },
    /// virtio-blk on the file at `path`.
    Disk { path: PathBuf, read_only: bool },
    /// virtio-balloon taking free page reports: free guest memory goes back to the host.
    FreePageReporting,
}

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Vm(#[from] crate::vm::Error),
    #[error(transparent)]
    Legacy(#[from] legacy::Error),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error(transparent)]
    Placement(#[from] crate::mmio_devices::Error),
    #[error("virtio-fs: {0}")]
    Fs(#[from] crate::devices::virtio::fs::Error),
    #[error("virtio-vsock: {0}")]
    Vsock(#[from] crate::devices::virtio::vsock::Error),
    #[error("virtio-net: {0}")]
    Net(#[from] crate::devices::virtio::net::Error),
    #[error("virtio-blk: {0}")]
    Block(#[from] crate::devices::virtio::block::Error),
    #[error("virtio-balloon: {0}")]
    Balloon(#[from] crate::devices::virtio::balloon::Error),
    #[error("cannot open the disk {path}: {source}")]
    Disk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("descriptor {fd} is not one the VMM can take: {why}")]
    InheritedFd { fd: RawFd, why: String },
    #[error("bad kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("every vCPU thread ended without a result")]
    NoVcpuResult,
    #[error("vCPU {0} panicked")]
    VcpuPanicked(u8),
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccomp::Error),
}

/// Builds the VM and runs it until the guest resets or powers off (or a vCPU fails). Guest
/// console output goes to `console`; `started` is when the VMM process started, for the boot
/// timeline.
pub fn run<W: Write + Send + 'static>(
    config: MachineConfig,
    console: W,
    started: Instant,
) -> Result<Exit, Error> {
    // The parent's descriptors are taken before the VMM opens any of its own, so that a number
    // the parent did not pass cannot name one of the VMM's.
    let mut taken_fds = Vec::new();
    let mut nets = Vec::new();
    for device in &config.devices {
        if let DeviceConfig::Net { tap_fd, mac } = device {
            nets.push((inherited_fd(*tap_fd, &mut taken_fds)?, *mac));
        }
    }
    // vsock last: its socket appearing is what tells the runtime the VM is up, so it must come
    // after the other devices (the virtio-fs handshake) succeeded.
    let (vsocks, others): (Vec<_>, Vec<_>) = config
        .devices
        .into_iter()
        .filter(|d| !matches!(d, DeviceConfig::Net { .. }))
        .partition(|d| matches!(d, DeviceConfig::Vsock { .. }));
    let vsock_sockets: Vec<PathBuf> = vsocks
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::Vsock { socket, .. } => Some(socket.clone()),
            _ => None,
        })
        .collect();

    let vm = Vm::new(&VmConfig { memory_mib: config.memory_mib, irqchip: true })?;
    legacy::attach(&vm, FirstOutput::new(console, started))?;
    let mut cmdline = Cmdline::new(boot::layout::CMDLINE_MAX)?;
    cmdline.insert_str(BASE_CMDLINE)?;
    seccomp::set_device_mode(config.seccomp);
    let mut placement = MmioDevices::new();
    for (tap, mac) in nets {
        placement.attach(&vm, &mut cmdline, Net::new(tap, mac)?)?;
    }
    for device in others.into_iter().chain(vsocks) {
        match device {
            DeviceConfig::Fs { tag, socket } => {
                placement.attach(&vm, &mut cmdline, VhostUserFs::new(&tag, &socket)?)?;
            }
            DeviceConfig::Vsock { cid, socket } => {
                placement.attach(&vm, &mut cmdline, Vsock::new(cid, socket)?)?;
            }
            // Taken above, before the VMM opened descriptors of its own.
            DeviceConfig::Net { .. } => {}
            DeviceConfig::Disk { path, read_only } => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(!read_only)
                    .open(&path)
                    .map_err(|source| Error::Disk { path: path.clone(), source })?;
                placement.attach(&vm, &mut cmdline, Block::new(file, read_only)?)?;
            }
            DeviceConfig::FreePageReporting => {
                placement.attach(&vm, &mut cmdline, Balloon::new()?)?;
            }
        }
    }
    if let Some(extra) = &config.cmdline {
        cmdline.insert_str(extra)?;
    }
    let entry = boot::load_linux(
        vm.memory(),
        &config.kernel,
        config.initrd.as_deref(),
        &cmdline,
        config.vcpus,
    )?;
    eprintln!("bazaar-vmm: boot: {entry}");

    // Every vCPU exists and is set up before any runs: an INIT-SIPI sent to a vCPU that KVM
    // does not know yet would be lost.
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let vcpu = vm.create_vcpu(id)?;
        boot::setup_vcpu(vm.kvm(), vcpu.fd(), id, config.vcpus, entry, true)?;
        vcpus.push(vcpu);
    }
    let (tx, rx) = mpsc::channel::<Result<Exit, Error>>();
    for mut vcpu in vcpus {
        let id = vcpu.id();
        let tx = tx.clone();
        let mode = config.seccomp;
        thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let result = seccomp::apply(ThreadKind::Vcpu, mode).map_err(Error::from);
                let result = result.and_then(|()| {
                    if id == 0 {
                        boot_event("vCPU 0 enters the kernel", started);
                    }
                    // A panic on this thread (a device model's bug) must still end the VM:
                    // the main thread waits for a result, and other vCPUs hold the channel.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vcpu.run()));
                    run.map_err(|_| Error::VcpuPanicked(id))?.map_err(Error::from)
                });
                let _ = tx.send(result);
            })
            .map_err(Error::Thread)?;
    }
    drop(tx);
    // Only after spawning: threads inherit the filter of the thread that spawns them.
    seccomp::apply(ThreadKind::Vmm, config.seccomp)?;
    // The first vCPU to stop decides; the others end with the process.
    let result = rx.recv().map_err(|_| Error::NoVcpuResult)?;
    for socket in &vsock_sockets {
        let _ = std::fs::remove_file(socket);
    }
    // The VM is not torn down: the process ends right after, and a teardown under the
    // filters could run device destructors on whichever thread drops the last reference (a
    // vCPU thread may not close sockets or remove files).
    std::mem::forget(vm);
    result
}

/// Takes ownership of descriptor `fd`, which the VMM's parent left open for it (a tap).
/// Refuses the standard streams, a descriptor that is not open, and one taken already.
fn inherited_fd(fd: RawFd, taken: &mut Vec<RawFd>) -> Result<OwnedFd, Error> {
    let refuse = |why: &str| Error::InheritedFd { fd, why: why.to_string() };
    if fd <= 2 {
        return Err(refuse("it is a standard stream"));
    }
    if taken.contains(&fd) {
        return Err(refuse("it is named twice"));
    }
    // SAFETY: F_GETFD only reads the flags of a descriptor number; it touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(refuse("it is not open"));
    }
    taken.push(fd);
    // SAFETY: the descriptor is open, above the standard streams, named once on the command
    // line, and nothing else in this process knows it: the parent opened it for this device.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One line of the boot timeline on stderr.
fn boot_event(what: &str, started: Instant) {
    eprintln!("bazaar-vmm: boot: {what} at {} ms", started.elapsed().as_millis());
}

/// The console writer, noting the first byte the guest prints (the kernel is running).
struct FirstOutput<W> {
    inner: W,
    started: Instant,
    seen: bool,
}

impl<W> FirstOutput<W> {
    fn new(inner: W, started: Instant) -> Self {
        Self { inner, started, seen: false }
    }
}

impl<W: Write> Write for FirstOutput<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !std::mem::replace(&mut self.seen, true) {
            boot_event("first console output", self.started);
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
