//! PID 1 duties in the guest: the kernel filesystems at boot, the console, and ending the VM
//! (PID 1 must never exit: the kernel would panic).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::container::cgroups;
use crate::sys;

/// One boot-time mount.
struct BootMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
    /// Whether the agent cannot work without it.
    essential: bool,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

const BOOT_MOUNTS: [BootMount; 8] = [
    BootMount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV.union(MsFlags::MS_NOEXEC),
        data: "",
        essential: true,
    },
    BootMount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV.union(MsFlags::MS_NOEXEC),
        data: "",
        essential: true,
    },
    BootMount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
        essential: true,
    },
    BootMount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
        essential: true,
    },
    BootMount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: NOSUID_NODEV,
        data: "mode=1777",
        essential: false,
    },
    BootMount {
        fstype: "tmpfs",
        target: "/run",
        flags: NOSUID_NODEV,
        data: "mode=0755",
        essential: true,
    },
    BootMount {
        fstype: "tmpfs",
        target: "/tmp",
        flags: NOSUID_NODEV,
        data: "mode=1777",
        essential: false,
    },
    BootMount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV.union(MsFlags::MS_NOEXEC).union(MsFlags::MS_RELATIME),
        data: "",
        essential: false,
    },
];

/// Sets up the guest as PID 1. Returns warnings about non-essential parts that failed (there is
/// no logger yet); an error means the agent cannot work.
pub fn setup() -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    for m in &BOOT_MOUNTS {
        if let Err(err) = boot_mount(m) {
            if m.essential {
                return Err(err);
            }
            warnings.push(format!("{err:#}"));
        }
        if m.target == "/dev" {
            ensure_stdio();
            // /dev/ptmx of devtmpfs opens the devpts instance mounted at /dev/pts.
        }
    }
    cgroups::enable_controllers(Path::new("/sys/fs/cgroup"));
    if let Err(err) = sys::interface_up("lo") {
        warnings.push(format!("bringing lo up failed: {err}"));
    }
    Ok(warnings)
}

fn boot_mount(m: &BootMount) -> anyhow::Result<()> {
    std::fs::create_dir_all(m.target).with_context(|| format!("mkdir {}", m.target))?;
    let data = (!m.data.is_empty()).then_some(m.data);
    match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, data) {
        // Mounted already (by the kernel, e.g. devtmpfs with CONFIG_DEVTMPFS_MOUNT).
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("mount {} on {}", m.fstype, m.target)),
    }
}

/// Without `/dev/console` in the initramfs the kernel starts init with no fds 0-2; open the
/// console (or /dev/null) for them, so that logs reach the console and no later fd lands on 0-2.
fn ensure_stdio() {
    for fd in 0..=2 {
        if sys::fd_is_open(fd) {
            continue;
        }
        let open = |path: &str| std::fs::OpenOptions::new().read(true).write(true).open(path);
        if let Ok(file) = open("/dev/console").or_else(|_| open("/dev/null")) {
            if file.as_raw_fd() == fd {
                // It landed exactly on the missing fd: keep it open.
                std::mem::forget(file);
            } else {
                let _ = sys::dup_onto(file.as_raw_fd(), fd);
            }
        }
    }
}

/// Flushes the filesystems and ends the VM; never returns.
///
/// The VM ends by a reboot, not a power-off: the guest kernel has no ACPI (QEMU microvm with
/// `acpi=off`), so `RB_POWER_OFF` only halts the CPU and QEMU keeps running, while a reboot
/// (`reboot=t` on the kernel command line) makes QEMU exit under `-no-reboot` (see
/// guest-image/README.md). Firecracker-style VMMs also treat a guest reboot as the VM's end.
pub fn end_vm() -> ! {
    nix::unistd::sync();
    let err = sys::reboot_now();
    eprintln!("bazaar-agent: reboot failed: {err}");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// A panic in PID 1 would abort and panic the kernel; log it to the console and end the VM
/// instead.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("bazaar-agent: panic in PID 1, ending the VM");
        end_vm();
    }));
}
