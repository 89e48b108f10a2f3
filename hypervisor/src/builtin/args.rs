//! The argument vector of `bazaar-vmm` for one sandbox VM, as a pure function of the
//! configuration.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Result};

use crate::VmConfig;

/// The guest's vsock context id (each VM has its own vsock device, so every guest can use the
/// first non-reserved CID, as under QEMU).
pub const GUEST_CID: u32 = 3;
/// Added to the VMM's own kernel parameters (console, reboot through the i8042, pci=off): the
/// initrd's /init is the agent. A guest panic reboots after 1 s (the VMM's `panic=1`), which
/// resets through the i8042 and so ends the VMM. The page reporting order is QEMU's
/// (`qemu::cmdline::KERNEL_CMDLINE` says why), for the VMM's balloon.
pub const KERNEL_PARAMS: &str = "rdinit=/init page_reporting.page_reporting_order=4";

pub use crate::device_args::{NetworkArg, SharedFsArg};

/// Everything `vmm_args` needs.
#[derive(Debug, Clone, Copy)]
pub struct VmmArgs<'a> {
    pub config: &'a VmConfig,
    /// The hybrid-vsock socket the VMM's vsock device listens on.
    pub vsock_socket: &'a Path,
    pub shared_fs: Option<SharedFsArg<'a>>,
    pub networks: &'a [NetworkArg<'a>],
}

/// The arguments of `bazaar-vmm`.
pub fn vmm_args(args: &VmmArgs) -> Result<Vec<OsString>> {
    let config = args.config;
    if config.vcpus == 0 || config.vcpus > 32 {
        bail!("the built-in VMM runs 1 to 32 vCPUs, got {}", config.vcpus);
    }
    let mut out: Vec<OsString> = Vec::new();
    let mut push = |flag: &str, value: OsString| {
        out.push(flag.into());
        out.push(value);
    };
    push("--kernel", config.kernel.clone().into_os_string());
    push("--initrd", config.initrd.clone().into_os_string());
    let extra = config.extra_kernel_params.trim();
    let cmdline = if extra.is_empty() {
        KERNEL_PARAMS.to_string()
    } else {
        format!("{KERNEL_PARAMS} {extra}")
    };
    push("--cmdline", cmdline.into());
    push("--memory-mib", config.memory_mib.to_string().into());
    push("--vcpus", config.vcpus.to_string().into());
    push(
        "--vsock",
        keyed(&[("cid", GUEST_CID.to_string().as_str())], Some(("socket", args.vsock_socket)))?,
    );
    if let Some(fs) = args.shared_fs {
        push("--fs", keyed(&[("tag", fs.tag)], Some(("socket", fs.socket)))?);
    }
    for net in args.networks {
        push("--net", keyed(&[("fd", net.tap_fd.to_string().as_str()), ("mac", net.mac)], None)?);
    }
    // Free page reporting, as under QEMU: the host memory of what the guest frees goes back.
    push("--balloon", "free-page-reporting=on".into());
    Ok(out)
}

/// `k=v,k=v[,path_key=path]` as the VMM parses it: values may not contain ',' or '='.
fn keyed(pairs: &[(&str, &str)], path: Option<(&str, &Path)>) -> Result<OsString> {
    let mut out = OsString::new();
    let mut first = true;
    let mut add = |key: &str, value: &std::ffi::OsStr| -> Result<()> {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(value);
        if value.is_empty() || bytes.contains(&b',') || bytes.contains(&b'=') {
            bail!(
                "the built-in VMM cannot take {key} {:?}: it is empty or contains ',' or '='",
                value
            );
        }
        if !first {
            out.push(",");
        }
        first = false;
        out.push(format!("{key}="));
        out.push(value);
        Ok(())
    };
    for (key, value) in pairs {
        add(key, std::ffi::OsStr::new(value))?;
    }
    if let Some((key, path)) = path {
        add(key, path.as_os_str())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::Acceleration;

    fn config() -> VmConfig {
        VmConfig {
            sandbox_id: "sb".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel: PathBuf::from("/k"),
            initrd: PathBuf::from("/i"),
            extra_kernel_params: " quiet ".into(),
            run_dir: PathBuf::from("/r"),
            acceleration: Acceleration::Kvm,
            tcg_cache_mib: 0,
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().expect("utf-8")).collect()
    }

    #[test]
    fn full_command_line() {
        let config = config();
        let networks = [NetworkArg { tap_fd: 3, mac: "02:00:00:00:00:01" }];
        let args = vmm_args(&VmmArgs {
            config: &config,
            vsock_socket: Path::new("/r/vsock.sock"),
            shared_fs: Some(SharedFsArg { tag: "bazaar", socket: Path::new("/r/virtiofsd.sock") }),
            networks: &networks,
        })
        .expect("valid");
        assert_eq!(
            strings(args),
            [
                "--kernel",
                "/k",
                "--initrd",
                "/i",
                "--cmdline",
                "rdinit=/init page_reporting.page_reporting_order=4 quiet",
                "--memory-mib",
                "256",
                "--vcpus",
                "2",
                "--vsock",
                "cid=3,socket=/r/vsock.sock",
                "--fs",
                "tag=bazaar,socket=/r/virtiofsd.sock",
                "--net",
                "fd=3,mac=02:00:00:00:00:01",
                "--balloon",
                "free-page-reporting=on",
            ]
        );
    }

    #[test]
    fn refuses_what_the_vmm_cannot_parse() {
        let mut config = config();
        let args = |config: &VmConfig, socket: &'static str| {
            vmm_args(&VmmArgs {
                config,
                vsock_socket: Path::new(socket),
                shared_fs: None,
                networks: &[],
            })
        };
        let err = args(&config, "/r,x/vsock.sock").expect_err("comma");
        assert!(err.to_string().contains("/r,x/vsock.sock"), "{err}");
        config.vcpus = 33;
        assert!(args(&config, "/r/vsock.sock").is_err());
    }
}
