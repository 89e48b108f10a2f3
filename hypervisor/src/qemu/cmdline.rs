//! The argument vectors of QEMU and its helpers, as pure functions of the configuration.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use anyhow::{bail, Result};

use crate::{Acceleration, VmConfig};

/// The guest's vsock context id. Each VM has its own vhost-user vsock backend, so every guest
/// can use the first non-reserved CID.
pub const GUEST_CID: u32 = 3;
/// The base of the guest kernel command line; `VmConfig::extra_kernel_params` is appended.
/// `reboot=t`: a guest reboot (and, through `panic=-1`, a panic) triple-faults, which QEMU turns
/// into an exit under `-no-reboot`. With `reboot=k` the kernel finds no keyboard controller on
/// microvm, falls back to a real-mode jump into the firmware and boots again inside the same QEMU.
/// `page_reporting.page_reporting_order=4`: free page reporting (the balloon below) hands back
/// free blocks from 64 KiB up instead of from 2 MiB (the guest kernel's patch 0003 makes the
/// parameter count): `make bench` measured 4.3 MiB less guest RAM backed at idle.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 reboot=t panic=-1 rdinit=/init page_reporting.page_reporting_order=4";
/// Added to the kernel command line under TCG, where each costs boot time (`make bench`):
/// `noapictimer`: no local APIC timer calibration against the PIT, which takes ~0.22 s of an
/// emulated boot (the PIT is the clock event device instead; fine for a small guest);
/// `no_timer_check`: no check that the timer interrupt works (KVM guests skip it by themselves).
pub const TCG_KERNEL_PARAMS: &str = "noapictimer no_timer_check";
/// The longest virtio-fs tag the device accepts.
const MAX_TAG_LEN: usize = 36;
/// virtiofsd worker threads; a sandbox's share sees little parallel I/O.
const VIRTIOFSD_THREADS: u32 = 1;

pub use crate::device_args::{NetworkArg, SharedFsArg};

/// Everything `qemu_args` needs.
#[derive(Debug, Clone, Copy)]
pub struct QemuArgs<'a> {
    pub config: &'a VmConfig,
    /// The resolved acceleration: `Kvm` or `Tcg`.
    pub acceleration: Acceleration,
    /// vhost-device-vsock's vhost-user socket.
    pub vhost_vsock_socket: &'a Path,
    pub shared_fs: Option<SharedFsArg<'a>>,
    pub networks: &'a [NetworkArg<'a>],
    pub qmp_socket: &'a Path,
}

/// The guest kernel command line.
pub fn kernel_cmdline(extra: &str) -> String {
    let extra = extra.trim();
    if extra.is_empty() {
        KERNEL_CMDLINE.to_string()
    } else {
        format!("{KERNEL_CMDLINE} {extra}")
    }
}

/// The guest kernel command line for a VM run with `acceleration` (`Kvm` or `Tcg`).
pub fn kernel_cmdline_for(acceleration: Acceleration, extra: &str) -> String {
    match acceleration {
        Acceleration::Tcg => kernel_cmdline(&format!("{TCG_KERNEL_PARAMS} {}", extra.trim())),
        Acceleration::Kvm | Acceleration::Auto => kernel_cmdline(extra),
    }
}

/// The arguments of `qemu-system-x86_64` for one sandbox VM: a microvm machine (virtio-mmio
/// devices announced on the kernel command line by QEMU, no ACPI), guest RAM in a shared memfd
/// (vhost-user backends map it), serial console on stdout, QMP on a Unix socket.
pub fn qemu_args(args: &QemuArgs) -> Result<Vec<OsString>> {
    let config = args.config;
    if config.vcpus == 0 {
        bail!("vcpus must be at least 1");
    }
    if config.memory_mib == 0 {
        bail!("memory_mib must be at least 1");
    }
    let (accel, cpu) = match args.acceleration {
        Acceleration::Kvm => ("kvm".to_string(), "host"),
        Acceleration::Tcg if config.tcg_cache_mib > 0 => {
            (format!("tcg,tb-size={}", config.tcg_cache_mib), "max")
        }
        Acceleration::Tcg => ("tcg".to_string(), "max"),
        Acceleration::Auto => bail!(
            "acceleration must be resolved (kvm or tcg) before building the QEMU command line"
        ),
    };
    let memory = format!("{}M", config.memory_mib);

    let mut out = Argv::default();
    out.push("-name").push(opt(OsStr::new(&format!("bazaar-{}", config.sandbox_id))));
    out.push("-no-user-config").push("-nodefaults").push("-nographic").push("-no-reboot");
    // rtc=on: without the CMOS clock the guest waits ~1 s for it at boot and starts in 1970.
    // x-option-roms=off: nothing to run from option ROMs with a direct kernel boot.
    out.push("-machine").push("microvm,acpi=off,rtc=on,x-option-roms=off,memory-backend=mem");
    out.push("-accel").push(accel);
    out.push("-cpu").push(cpu);
    out.push("-smp").push(config.vcpus.to_string());
    out.push("-m").push(&memory);
    out.push("-object").push(format!("memory-backend-memfd,id=mem,size={memory},share=on"));
    // Modern (virtio 1.0) virtio-mmio transport for every device.
    out.push("-global").push("virtio-mmio.force-legacy=false");
    out.push("-kernel").push(config.kernel.as_os_str());
    out.push("-initrd").push(config.initrd.as_os_str());
    out.push("-append").push(kernel_cmdline_for(args.acceleration, &config.extra_kernel_params));
    out.push("-chardev").push("stdio,id=console,signal=off");
    out.push("-serial").push("chardev:console");
    out.push("-chardev").push(socket_chardev("vsock", args.vhost_vsock_socket, ""));
    out.push("-device").push("vhost-user-vsock-device,chardev=vsock");
    if let Some(fs) = args.shared_fs {
        check_tag(fs.tag)?;
        out.push("-chardev").push(socket_chardev("fs0", fs.socket, ""));
        out.push("-device").push(format!("vhost-user-fs-device,chardev=fs0,tag={}", fs.tag));
    }
    for (i, net) in args.networks.iter().enumerate() {
        check_mac(net.mac)?;
        // vhost=off: the in-kernel vhost-net would need /dev/vhost-net and would bypass
        // nothing here (QEMU moves the frames either way under TCG).
        out.push("-netdev").push(format!("tap,id=net{i},fd={},vhost=off", net.tap_fd));
        out.push("-device").push(format!("virtio-net-device,netdev=net{i},mac={}", net.mac));
    }
    // Free page reporting: the guest hands pages it frees back to the host (QEMU punches them
    // out of the memfd), so an idle sandbox does not keep what its boot touched once (the
    // initrd image, init memory). Needs CONFIG_VIRTIO_BALLOON in the guest kernel; the balloon
    // itself is never inflated.
    out.push("-device").push("virtio-balloon-device,free-page-reporting=on");
    out.push("-chardev").push(socket_chardev("qmp", args.qmp_socket, ",server=on,wait=off"));
    out.push("-mon").push("chardev=qmp,mode=control");
    Ok(out.0)
}

/// The arguments of `vhost-device-vsock` serving one guest: the vhost-user socket QEMU connects
/// to, and the hybrid-vsock socket for the host side. The separate flags (rather than `--vm
/// k=v,...`) accept any path, commas included.
pub fn vhost_vsock_args(vhost_socket: &Path, uds_path: &Path) -> Vec<OsString> {
    let mut out = Argv::default();
    out.push("--guest-cid").push(GUEST_CID.to_string());
    out.push("--socket").push(vhost_socket.as_os_str());
    out.push("--uds-path").push(uds_path.as_os_str());
    out.0
}

/// The arguments of `virtiofsd` sharing `shared_dir`. The chroot sandbox (rather than the
/// default mount namespace) keeps virtiofsd in the host mount namespace, so bind mounts the
/// runtime adds under the shared directory after boot are visible to the guest.
pub fn virtiofsd_args(socket: &Path, shared_dir: &Path) -> Vec<OsString> {
    let mut out = Argv::default();
    out.push(flag("--socket-path=", socket));
    out.push(flag("--shared-dir=", shared_dir));
    out.push("--sandbox=chroot");
    out.push("--announce-submounts");
    out.push("--cache=auto");
    out.push(format!("--thread-pool-size={VIRTIOFSD_THREADS}"));
    out.0
}

fn check_mac(mac: &str) -> Result<()> {
    let octets: Vec<&str> = mac.split(':').collect();
    let valid = octets.len() == 6
        && octets.iter().all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        bail!("MAC address {mac:?} is not six hex octets separated by ':'");
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        bail!("virtio-fs tag {tag:?} must be 1 to {MAX_TAG_LEN} bytes long");
    }
    if !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        bail!("virtio-fs tag {tag:?} may only contain ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// `socket,id=<id>,path=<path><extra>` with the path escaped for QEMU's option parser.
fn socket_chardev(id: &str, path: &Path, extra: &str) -> OsString {
    let mut spec = OsString::from(format!("socket,id={id},path="));
    spec.push(opt(path.as_os_str()));
    spec.push(extra);
    spec
}

/// Escapes a value for a QEMU `key=value,...` option string: a comma is written twice.
fn opt(value: &OsStr) -> OsString {
    let mut bytes = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    OsString::from_vec(bytes)
}

#[derive(Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn push(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.0.push(arg.as_ref().to_os_string());
        self
    }
}

/// `--name=<path>` without requiring the path to be UTF-8.
fn flag(name: &str, path: &Path) -> OsString {
    let mut out = OsString::from(name);
    out.push(path.as_os_str());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config() -> VmConfig {
        VmConfig {
            sandbox_id: "sb1".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel: "/k/bzImage".into(),
            initrd: "/k/initrd.img".into(),
            extra_kernel_params: " quiet ".into(),
            run_dir: "/run/bazaar/sb1".into(),
            acceleration: Acceleration::Auto,
            tcg_cache_mib: 0,
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn full_command_line_under_tcg() {
        let config = config();
        let args = qemu_args(&QemuArgs {
            config: &config,
            acceleration: Acceleration::Tcg,
            vhost_vsock_socket: Path::new("/run/bazaar/sb1/vhost-vsock.sock"),
            shared_fs: Some(SharedFsArg {
                tag: "bazaarfs",
                socket: Path::new("/run/bazaar/sb1/virtiofsd.sock"),
            }),
            networks: &[],
            qmp_socket: Path::new("/run/bazaar/sb1/qmp.sock"),
        })
        .unwrap();
        let expected = "-name bazaar-sb1 -no-user-config -nodefaults -nographic -no-reboot \
            -machine microvm,acpi=off,rtc=on,x-option-roms=off,memory-backend=mem -accel tcg -cpu max -smp 2 -m 256M \
            -object memory-backend-memfd,id=mem,size=256M,share=on \
            -global virtio-mmio.force-legacy=false \
            -kernel /k/bzImage -initrd /k/initrd.img \
            -append APPEND \
            -chardev stdio,id=console,signal=off -serial chardev:console \
            -chardev socket,id=vsock,path=/run/bazaar/sb1/vhost-vsock.sock \
            -device vhost-user-vsock-device,chardev=vsock \
            -chardev socket,id=fs0,path=/run/bazaar/sb1/virtiofsd.sock \
            -device vhost-user-fs-device,chardev=fs0,tag=bazaarfs \
            -device virtio-balloon-device,free-page-reporting=on \
            -chardev socket,id=qmp,path=/run/bazaar/sb1/qmp.sock,server=on,wait=off \
            -mon chardev=qmp,mode=control";
        let append =
            "console=ttyS0 reboot=t panic=-1 rdinit=/init page_reporting.page_reporting_order=4 \
             noapictimer no_timer_check quiet";
        let expected: Vec<String> = expected
            .split_whitespace()
            .map(|s| if s == "APPEND" { append.to_string() } else { s.to_string() })
            .collect();
        assert_eq!(strings(args), expected);
    }

    #[test]
    fn each_tap_becomes_a_virtio_net_device_and_bad_macs_are_refused() {
        let config = config();
        let networks = [
            NetworkArg { tap_fd: 3, mac: "0a:58:0a:fb:00:05" },
            NetworkArg { tap_fd: 4, mac: "02:00:00:00:00:01" },
        ];
        let args = QemuArgs {
            config: &config,
            acceleration: Acceleration::Tcg,
            vhost_vsock_socket: Path::new("/r/v.sock"),
            shared_fs: None,
            networks: &networks,
            qmp_socket: Path::new("/r/q.sock"),
        };
        let argv = strings(qemu_args(&args).unwrap());
        assert_eq!(
            value_of(&argv, "-netdev"),
            ["tap,id=net0,fd=3,vhost=off", "tap,id=net1,fd=4,vhost=off"]
        );
        let devices = value_of(&argv, "-device");
        assert!(devices.contains(&"virtio-net-device,netdev=net0,mac=0a:58:0a:fb:00:05"));
        assert!(devices.contains(&"virtio-net-device,netdev=net1,mac=02:00:00:00:00:01"));

        for bad in ["0a:58:0a:fb:00", "0a:58:0a:fb:00:5", "0a:58:0a:fb:00:zz", "x,y=z"] {
            let networks = [NetworkArg { tap_fd: 3, mac: bad }];
            let err = qemu_args(&QemuArgs { networks: &networks, ..args }).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_no_share_means_no_fs_device() {
        let config = config();
        let args = strings(
            qemu_args(&QemuArgs {
                config: &config,
                acceleration: Acceleration::Kvm,
                vhost_vsock_socket: Path::new("/r/v.sock"),
                shared_fs: None,
                networks: &[],
                qmp_socket: Path::new("/r/q.sock"),
            })
            .unwrap(),
        );
        assert_eq!(value_of(&args, "-accel"), ["kvm"]);
        assert_eq!(value_of(&args, "-cpu"), ["host"]);
        // The TCG-only boot parameters stay out of a KVM guest's command line.
        assert_eq!(value_of(&args, "-append"), [kernel_cmdline("quiet").as_str()]);
        assert!(!args.iter().any(|a| a.contains("vhost-user-fs")));
    }

    #[test]
    fn commas_in_paths_and_ids_are_escaped() {
        let mut config = config();
        config.sandbox_id = "a,b".into();
        let args = strings(
            qemu_args(&QemuArgs {
                config: &config,
                acceleration: Acceleration::Tcg,
                vhost_vsock_socket: Path::new("/r,x/v.sock"),
                shared_fs: None,
                networks: &[],
                qmp_socket: Path::new("/r/q.sock"),
            })
            .unwrap(),
        );
        assert_eq!(value_of(&args, "-name"), ["bazaar-a,,b"]);
        assert!(value_of(&args, "-chardev").contains(&"socket,id=vsock,path=/r,,x/v.sock"));
    }

    #[test]
    fn unresolved_acceleration_and_bad_tags_are_rejected() {
        let config = config();
        let mut args = QemuArgs {
            config: &config,
            acceleration: Acceleration::Auto,
            vhost_vsock_socket: Path::new("/r/v.sock"),
            shared_fs: None,
            networks: &[],
            qmp_socket: Path::new("/r/q.sock"),
        };
        assert!(qemu_args(&args).is_err());
        args.acceleration = Acceleration::Tcg;
        for tag in ["", "a,b", "x".repeat(37).as_str()] {
            args.shared_fs = Some(SharedFsArg { tag, socket: Path::new("/r/f.sock") });
            assert!(qemu_args(&args).is_err(), "tag {tag:?} accepted");
        }
    }

    #[test]
    fn kernel_cmdline_appends_extras() {
        assert_eq!(kernel_cmdline(""), KERNEL_CMDLINE);
        assert_eq!(kernel_cmdline("  "), KERNEL_CMDLINE);
        assert_eq!(kernel_cmdline("quiet"), format!("{KERNEL_CMDLINE} quiet"));
        assert_eq!(
            kernel_cmdline_for(Acceleration::Tcg, " quiet "),
            format!("{KERNEL_CMDLINE} {TCG_KERNEL_PARAMS} quiet")
        );
        assert_eq!(
            kernel_cmdline_for(Acceleration::Tcg, ""),
            format!("{KERNEL_CMDLINE} {TCG_KERNEL_PARAMS}")
        );
        assert_eq!(kernel_cmdline_for(Acceleration::Kvm, "quiet"), kernel_cmdline("quiet"));
    }

    #[test]
    fn helper_command_lines() {
        let vsock =
            strings(vhost_vsock_args(Path::new("/r/vhost-vsock.sock"), Path::new("/r/vsock.sock")));
        assert_eq!(
            vsock,
            ["--guest-cid", "3", "--socket", "/r/vhost-vsock.sock", "--uds-path", "/r/vsock.sock"]
        );
        let fs =
            strings(virtiofsd_args(Path::new("/r/virtiofsd.sock"), &PathBuf::from("/r/shared")));
        assert_eq!(
            fs,
            [
                "--socket-path=/r/virtiofsd.sock",
                "--shared-dir=/r/shared",
                "--sandbox=chroot",
                "--announce-submounts",
                "--cache=auto",
                "--thread-pool-size=1"
            ]
        );
    }
}
