//! `bazaar-vmm`: boot a Linux kernel under KVM with the guest's serial console on stdout.
//! Exits 0 when the guest resets or powers off, 1 on a VMM error, 2 on a usage error.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bazaar_vmm::machine::{self, DeviceConfig, MachineConfig};

const USAGE: &str = "usage: bazaar-vmm --kernel PATH [--initrd PATH] [--cmdline STR] \
[--memory-mib N] [--vcpus N] [--seccomp MODE] [--vsock cid=N,socket=PATH] \
[--fs tag=TAG,socket=PATH]... [--net fd=N,mac=MAC]... [--disk path=PATH[,readonly=on]]... \
[--balloon free-page-reporting=on]

  --kernel PATH     bzImage or ELF vmlinux (64-bit boot protocol)
  --initrd PATH     initramfs
  --cmdline STR     appended to the VMM's own kernel parameters:
                    console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux
                    i8042.nopnp i8042.dumbkbd (and one virtio_mmio.device= per device)
  --memory-mib N    guest RAM (default 256)
  --vcpus N         vCPUs, 1 to 32 (default 1)
  --seccomp MODE    what a thread's seccomp filter does with a system call it does not
                    allow: kill (the process, default), log (allow and log), none (no filter)
  --vsock cid=N,socket=PATH
                    virtio-vsock with guest context id N (3 or more); host programs reach
                    guest port P by connecting to the Unix socket PATH and writing
                    \"CONNECT P\\n\"; guest connections to host port P go to PATH_P
  --fs tag=TAG,socket=PATH
                    virtio-fs named TAG, served by the vhost-user backend (virtiofsd)
                    listening at PATH
  --net fd=N,mac=MAC
                    virtio-net on the tap the VMM inherits open as descriptor N (opened
                    with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR), guest MAC aa:bb:cc:dd:ee:ff
  --disk path=PATH[,readonly=on|off]
                    virtio-blk on the file PATH
  --balloon free-page-reporting=on
                    virtio-balloon that takes the guest's free page reports: the host
                    memory behind free guest pages is given back (the balloon itself is
                    never inflated)";

/// "aa:bb:cc:dd:ee:ff" as six bytes.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut octets = text.split(':');
    for byte in &mut mac {
        let octet = octets.next().filter(|o| o.len() == 2)?;
        *byte = u8::from_str_radix(octet, 16).ok()?;
    }
    octets.next().is_none().then_some(mac)
}

/// `key=value,key=value` of a device flag, every key known and none repeated.
fn keyed<'a>(
    flag: &str,
    value: &'a str,
    known: &[&str],
) -> Result<HashMap<&'a str, &'a str>, String> {
    let mut pairs = HashMap::new();
    for item in value.split(',') {
        let (key, val) = item
            .split_once('=')
            .ok_or_else(|| format!("{flag} {value}: expected key=value, got {item:?}"))?;
        if !known.contains(&key) {
            return Err(format!("{flag}: unknown key {key:?} (known: {})", known.join(", ")));
        }
        if pairs.insert(key, val).is_some() {
            return Err(format!("{flag}: {key} given twice"));
        }
    }
    Ok(pairs)
}

/// The value of `key` in a device flag, which must be there and not be empty.
fn required<'a>(flag: &str, pairs: &HashMap<&str, &'a str>, key: &str) -> Result<&'a str, String> {
    pairs.get(key).copied().filter(|v| !v.is_empty()).ok_or_else(|| format!("{flag} needs {key}="))
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<MachineConfig, String> {
    let (mut kernel, mut initrd, mut cmdline) = (None, None, None);
    let (mut memory_mib, mut vcpus) = (256u64, 1u8);
    let mut devices = Vec::new();
    let mut seccomp = bazaar_vmm::seccomp::Mode::default();
    while let Some(flag) = argv.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value)),
            "--initrd" => initrd = Some(PathBuf::from(value)),
            "--cmdline" => cmdline = Some(value),
            "--memory-mib" => {
                memory_mib = value
                    .parse()
                    .ok()
                    .filter(|&m| (16..=1 << 20).contains(&m))
                    .ok_or_else(|| format!("--memory-mib {value}: expected 16 to 1048576"))?
            }
            "--vcpus" => {
                vcpus = value
                    .parse()
                    .ok()
                    .filter(|&n| (1..=32).contains(&n))
                    .ok_or_else(|| format!("--vcpus {value}: expected 1 to 32"))?
            }
            "--seccomp" => seccomp = value.parse().map_err(|e| format!("--seccomp: {e}"))?,
            "--vsock" => {
                let pairs = keyed(&flag, &value, &["cid", "socket"])?;
                let cid = required(&flag, &pairs, "cid")?;
                devices.push(DeviceConfig::Vsock {
                    cid: cid
                        .parse()
                        .map_err(|_| format!("--vsock: cid {cid:?} is not a number"))?,
                    socket: PathBuf::from(required(&flag, &pairs, "socket")?),
                });
            }
            "--net" => {
                let pairs = keyed(&flag, &value, &["fd", "mac"])?;
                let fd = required(&flag, &pairs, "fd")?;
                let mac = required(&flag, &pairs, "mac")?;
                devices.push(DeviceConfig::Net {
                    tap_fd: fd.parse().map_err(|_| format!("--net: fd {fd:?} is not a number"))?,
                    mac: parse_mac(mac)
                        .ok_or_else(|| format!("--net: mac {mac:?} is not aa:bb:cc:dd:ee:ff"))?,
                });
            }
            "--disk" => {
                let pairs = keyed(&flag, &value, &["path", "readonly"])?;
                let read_only = match pairs.get("readonly").copied() {
                    None | Some("off") => false,
                    Some("on") => true,
                    Some(other) => {
                        return Err(format!("--disk: readonly={other}: expected on or off"))
                    }
                };
                devices.push(DeviceConfig::Disk {
                    path: PathBuf::from(required(&flag, &pairs, "path")?),
                    read_only,
                });
            }
            "--balloon" => {
                let pairs = keyed(&flag, &value, &["free-page-reporting"])?;
                match required(&flag, &pairs, "free-page-reporting")? {
                    "on" => devices.push(DeviceConfig::FreePageReporting),
                    other => {
                        return Err(format!(
                            "--balloon: free-page-reporting={other}: only on is supported \
                             (leave --balloon out for no balloon)"
                        ))
                    }
                }
            }
            "--fs" => {
                let pairs = keyed(&flag, &value, &["tag", "socket"])?;
                devices.push(DeviceConfig::Fs {
                    tag: required(&flag, &pairs, "tag")?.to_string(),
                    socket: PathBuf::from(required(&flag, &pairs, "socket")?),
                });
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let kernel = kernel.ok_or("--kernel is required")?;
    Ok(MachineConfig { kernel, initrd, cmdline, memory_mib, vcpus, devices, seccomp })
}

/// Guest console output: stdout, flushed on every write so prompts show at once.
struct Console;

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("bazaar-vmm: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match machine::run(config, Console, started) {
        Ok(exit) => {
            eprintln!("bazaar-vmm: guest stopped: {exit:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bazaar-vmm: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<MachineConfig, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_every_flag() {
        let a = parse(&[
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--cmdline",
            "quiet",
            "--memory-mib",
            "512",
            "--vcpus",
            "2",
            "--seccomp",
            "log",
        ])
        .expect("valid");
        assert_eq!(a.kernel, PathBuf::from("k"));
        assert_eq!(a.initrd, Some(PathBuf::from("i")));
        assert_eq!(a.cmdline.as_deref(), Some("quiet"));
        assert_eq!((a.memory_mib, a.vcpus), (512, 2));
        assert!(a.devices.is_empty());
        assert_eq!(a.seccomp, bazaar_vmm::seccomp::Mode::Log);
        let defaults = parse(&["--kernel", "k"]).expect("valid");
        assert_eq!(defaults.seccomp, bazaar_vmm::seccomp::Mode::Kill);
    }

    #[test]
    fn parses_devices() {
        let a = parse(&[
            "--kernel",
            "k",
            "--fs",
            "tag=rootfs,socket=/run/fs.sock",
            "--vsock",
            "cid=3,socket=/run/v.sock",
            "--net",
            "fd=5,mac=02:00:0a:0b:0c:ff",
            "--disk",
            "path=/d.img,readonly=on",
            "--balloon",
            "free-page-reporting=on",
        ])
        .expect("valid");
        assert!(matches!(a.devices[4], DeviceConfig::FreePageReporting));
        assert!(matches!(
            a.devices[2],
            DeviceConfig::Net { tap_fd: 5, mac: [0x02, 0, 0x0a, 0x0b, 0x0c, 0xff] }
        ));
        assert!(
            matches!(&a.devices[3], DeviceConfig::Disk { path, read_only: true } if path.as_os_str() == "/d.img")
        );
        match a.devices.as_slice() {
            [DeviceConfig::Fs { tag, socket }, DeviceConfig::Vsock { cid: 3, socket: vsock }, ..] =>
            {
                assert_eq!(vsock.as_path(), std::path::Path::new("/run/v.sock"));
                assert_eq!(
                    (tag.as_str(), socket.as_path()),
                    ("rootfs", std::path::Path::new("/run/fs.sock"))
                )
            }
            other => panic!("unexpected devices {other:?}"),
        }
    }

    #[test]
    fn refuses_bad_device_flags() {
        for bad in [
            "tag=x",
            "socket=/s",
            "tag=x,socket=/s,extra=1",
            "tag=x,tag=y,socket=/s",
            "tag",
            "tag=,socket=/s",
        ] {
            let err = parse(&["--kernel", "k", "--fs", bad]).expect_err(bad);
            assert!(err.starts_with("--fs"), "{bad}: {err}");
        }
        for (flag, bad) in [
            ("--net", "fd=x,mac=02:00:00:00:00:01"),
            ("--net", "fd=3,mac=02:00:00:00:00"),
            ("--net", "fd=3,mac=02:00:00:00:00:01:02"),
            ("--net", "fd=3,mac=zz:00:00:00:00:01"),
            ("--disk", "path=/d,readonly=yes"),
            ("--disk", "readonly=on"),
            ("--balloon", "free-page-reporting=off"),
            ("--balloon", "inflate=on"),
        ] {
            let err = parse(&["--kernel", "k", flag, bad]).expect_err(bad);
            assert!(err.starts_with(flag), "{bad}: {err}");
        }
        for bad in ["cid=three,socket=/s", "socket=/s", "cid=3"] {
            let err = parse(&["--kernel", "k", "--vsock", bad]).expect_err(bad);
            assert!(err.starts_with("--vsock"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_bad_input() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--kernel"]).is_err());
        assert!(parse(&["--kernel", "k", "--vcpus", "0"]).is_err());
        assert!(parse(&["--kernel", "k", "--memory-mib", "lots"]).is_err());
        assert!(parse(&["--kernel", "k", "--bogus", "1"]).is_err());
        assert!(parse(&["--kernel", "k", "--seccomp", "off"]).is_err());
    }
}
