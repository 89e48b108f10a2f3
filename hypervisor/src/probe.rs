//! Decides how guest code runs: KVM where the host can really run a Linux guest with it,
//! QEMU's software emulation (TCG) otherwise.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::Acceleration;

pub const KVM_DEVICE: &str = "/dev/kvm";
const CPUINFO: &str = "/proc/cpuinfo";
/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// The only KVM API version Linux has ever reported.
const KVM_API_VERSION: libc::c_int = 12;

/// The outcome of the probe, with a sentence for the log saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// `Kvm` or `Tcg`, never `Auto`.
    pub acceleration: Acceleration,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Acceleration "kvm" was configured but /dev/kvm cannot be used.
    #[error("acceleration \"kvm\" was configured but {KVM_DEVICE} is unusable: {0}")]
    KvmUnusable(String),
}

/// What the probe found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `Ok(())` when /dev/kvm opens and answers KVM_GET_API_VERSION with 12, else why not.
    pub kvm: Result<(), String>,
    /// The hardware virtualization flag of the CPU (`vmx` or `svm`), if any.
    pub hw_virt_flag: Option<&'static str>,
}

impl HostFacts {
    /// Looks at /dev/kvm and /proc/cpuinfo.
    pub fn probe() -> HostFacts {
        let hw_virt_flag = match std::fs::read_to_string(CPUINFO) {
            Ok(text) => hw_virt_flag(&text),
            Err(_) => None,
        };
        HostFacts { kvm: probe_kvm(Path::new(KVM_DEVICE)), hw_virt_flag }
    }
}

/// Resolves `requested` on this host.
pub fn resolve(requested: Acceleration) -> Result<AccelChoice, ProbeError> {
    if requested == Acceleration::Tcg {
        return decide(requested, &HostFacts { kvm: Ok(()), hw_virt_flag: None });
    }
    decide(requested, &HostFacts::probe())
}

/// The decision as a pure function of the host facts.
pub fn decide(requested: Acceleration, host: &HostFacts) -> Result<AccelChoice, ProbeError> {
    let choice = |acceleration, reason: String| Ok(AccelChoice { acceleration, reason });
    match requested {
        Acceleration::Tcg => choice(Acceleration::Tcg, "tcg: configured".to_string()),
        Acceleration::Kvm => match (&host.kvm, host.hw_virt_flag) {
            (Err(why), _) => Err(ProbeError::KvmUnusable(why.clone())),
            (Ok(()), Some(flag)) => choice(
                Acceleration::Kvm,
                format!("kvm: configured; {KVM_DEVICE} works and the CPU has {flag}"),
            ),
            (Ok(()), None) => choice(
                Acceleration::Kvm,
                format!(
                    "kvm: configured, although {CPUINFO} has no vmx/svm flag \
                     (an emulated nested KVM may fail to run a Linux guest)"
                ),
            ),
        },
        Acceleration::Auto => match (&host.kvm, host.hw_virt_flag) {
            (Err(why), _) => choice(Acceleration::Tcg, format!("tcg: {why}")),
            (Ok(()), None) => choice(
                Acceleration::Tcg,
                format!(
                    "tcg: {CPUINFO} has no vmx/svm flag \
                     (nested emulated KVM cannot run a Linux guest)"
                ),
            ),
            (Ok(()), Some(flag)) => {
                choice(Acceleration::Kvm, format!("kvm: {KVM_DEVICE} works and the CPU has {flag}"))
            }
        },
    }
}

/// Which backend `hypervisor = "auto"` picks, with a reason for the log: the built-in VMM
/// (`true`) where KVM can run a Linux guest (it works and the CPU has vmx or svm) and
/// acceleration is not forced to TCG; QEMU everywhere else, since only QEMU emulates a CPU.
pub fn auto_picks_builtin(requested: Acceleration, host: &HostFacts) -> (bool, String) {
    if requested == Acceleration::Tcg {
        return (false, "auto: QEMU, since acceleration is tcg".to_string());
    }
    match (&host.kvm, host.hw_virt_flag) {
        (Ok(()), Some(flag)) => {
            (true, format!("auto: built-in VMM, since {KVM_DEVICE} works and the CPU has {flag}"))
        }
        (Err(why), _) => (false, format!("auto: QEMU, since {why}")),
        (Ok(()), None) => (
            false,
            format!(
                "auto: QEMU, since {CPUINFO} has no vmx/svm flag (the built-in VMM needs a KVM \
                 that can run Linux; an emulated nested KVM cannot)"
            ),
        ),
    }
}

/// The hardware virtualization flag in /proc/cpuinfo text, if any CPU lists one.
pub fn hw_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim() != "flags" {
            continue;
        }
        for flag in value.split_whitespace() {
            match flag {
                "vmx" => return Some("vmx"),
                "svm" => return Some("svm"),
                _ => {}
            }
        }
    }
    None
}

fn probe_kvm(device: &Path) -> Result<(), String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|err| format!("{} cannot be opened: {err}", device.display()))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int; `file` is an open
    // descriptor that outlives the call.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version < 0 {
        return Err(format!(
            "KVM_GET_API_VERSION on {} failed: {}",
            device.display(),
            std::io::Error::last_os_error()
        ));
    }
    if version != KVM_API_VERSION {
        return Err(format!(
            "{} reports KVM API version {version}, expected {KVM_API_VERSION}",
            device.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        flags\t\t: fpu vme de pse tsc msr pae vmx smx est\nbugs\t\t: spectre_v1\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu sse2 svm lahf_lm\n";
    const NONE: &str = "processor\t: 0\nflags\t\t: fpu vme hypervisor avx2 vmxnet_like\n\
        vmx flags\t: vnmi preemption_timer\n";

    #[test]
    fn auto_picks_the_builtin_vmm_only_where_kvm_runs_linux() {
        let real = HostFacts { kvm: Ok(()), hw_virt_flag: Some("vmx") };
        let emulated = HostFacts { kvm: Ok(()), hw_virt_flag: None };
        let absent = HostFacts { kvm: Err("/dev/kvm cannot be opened".into()), hw_virt_flag: None };
        assert!(auto_picks_builtin(Acceleration::Auto, &real).0);
        assert!(auto_picks_builtin(Acceleration::Kvm, &real).0);
        assert!(!auto_picks_builtin(Acceleration::Tcg, &real).0);
        let (builtin, reason) = auto_picks_builtin(Acceleration::Auto, &emulated);
        assert!(!builtin && reason.contains("no vmx/svm"), "{reason}");
        let (builtin, reason) = auto_picks_builtin(Acceleration::Kvm, &emulated);
        assert!(!builtin && reason.contains("needs a KVM that can run Linux"), "{reason}");
        let (builtin, reason) = auto_picks_builtin(Acceleration::Kvm, &absent);
        assert!(!builtin && reason.contains("cannot be opened"), "{reason}");
    }

    #[test]
    fn finds_hardware_virtualization_flags() {
        assert_eq!(hw_virt_flag(INTEL), Some("vmx"));
        assert_eq!(hw_virt_flag(AMD), Some("svm"));
        // "vmx flags" is a different key and "vmxnet_like" is not "vmx".
        assert_eq!(hw_virt_flag(NONE), None);
        assert_eq!(hw_virt_flag(""), None);
    }

    fn facts(kvm: Result<(), &str>, flag: Option<&'static str>) -> HostFacts {
        HostFacts { kvm: kvm.map_err(str::to_string), hw_virt_flag: flag }
    }

    #[test]
    fn auto_needs_both_kvm_and_the_cpu_flag() {
        let kvm = decide(Acceleration::Auto, &facts(Ok(()), Some("vmx"))).unwrap();
        assert_eq!(kvm.acceleration, Acceleration::Kvm);

        let nested = decide(Acceleration::Auto, &facts(Ok(()), None)).unwrap();
        assert_eq!(nested.acceleration, Acceleration::Tcg);
        assert!(nested.reason.contains("no vmx/svm flag"), "{}", nested.reason);

        let missing = decide(
            Acceleration::Auto,
            &facts(Err("/dev/kvm cannot be opened: ENOENT"), Some("svm")),
        );
        let missing = missing.unwrap();
        assert_eq!(missing.acceleration, Acceleration::Tcg);
        assert!(missing.reason.contains("/dev/kvm"), "{}", missing.reason);
    }

    #[test]
    fn explicit_kvm_without_dev_kvm_is_an_error_naming_it() {
        let err = decide(
            Acceleration::Kvm,
            &facts(Err("/dev/kvm cannot be opened: ENOENT"), Some("vmx")),
        );
        let message = err.unwrap_err().to_string();
        assert!(message.contains("/dev/kvm"), "{message}");
    }

    #[test]
    fn explicit_choices_are_kept() {
        assert_eq!(
            decide(Acceleration::Tcg, &facts(Ok(()), Some("vmx"))).unwrap().acceleration,
            Acceleration::Tcg
        );
        let kvm = decide(Acceleration::Kvm, &facts(Ok(()), None)).unwrap();
        assert_eq!(kvm.acceleration, Acceleration::Kvm);
        assert!(kvm.reason.contains("no vmx/svm"), "{}", kvm.reason);
    }

    #[test]
    fn this_host_resolves_without_panicking() {
        let choice = resolve(Acceleration::Auto).unwrap();
        assert_ne!(choice.acceleration, Acceleration::Auto);
    }
}
