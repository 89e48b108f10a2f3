//! Capabilities, applied the way runc applies them:
//!
//! 1. [`restrict_bounding_set`] while still root with every capability, before the user switch;
//! 2. `PR_SET_KEEPCAPS` around the uid switch ([`keep_across_setuid`]), so that a non-root user
//!    keeps the permitted set;
//! 3. [`apply`]: `capset` of effective, permitted and inheritable, then the ambient set.
//!
//! What the program sees after `execve` is then the kernel's rule: root gets its bounding set (and
//! inheritable) as permitted and effective whatever the spec's effective/permitted say; any other
//! user keeps only its ambient capabilities. Names unknown to the running kernel are ignored, as
//! runc ignores them.

use std::collections::HashSet;

use anyhow::Context;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::kernel::{self, CapSets};
use crate::sys;

/// Capability names in kernel order: the index is the capability number.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability, e.g. 21 for `CAP_SYS_ADMIN`.
pub fn number(cap: &Capability) -> Option<u32> {
    let name = serde_json::to_value(cap).ok()?;
    let name = name.as_str()?;
    NAMES.iter().position(|known| *known == name).map(|n| n as u32)
}

/// The highest capability the running kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u32 - 1)
}

/// The set of the capabilities named, as a bit mask; names the kernel does not know are left out.
pub fn mask(caps: Option<&Capabilities>, last: u32) -> u64 {
    caps.into_iter()
        .flatten()
        .filter_map(number)
        .filter(|cap| *cap <= last && *cap < 64)
        .fold(0, |mask, cap| mask | (1u64 << cap))
}

/// Drops every capability outside `bounding` from the bounding set.
pub fn restrict_bounding_set(bounding: &Capabilities) -> anyhow::Result<()> {
    let keep: HashSet<u32> = bounding.iter().filter_map(number).collect();
    for cap in 0..=last_cap() {
        if keep.contains(&cap) {
            continue;
        }
        match sys::capbset_drop(cap) {
            Ok(()) => {}
            // A capability this kernel does not have.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("drop capability {cap} from the bounding set"))
            }
        }
    }
    Ok(())
}

/// Sets or clears `PR_SET_KEEPCAPS` (set before the uid switch, cleared after it).
pub fn keep_across_setuid(keep: bool) -> anyhow::Result<()> {
    kernel::set_keep_caps(keep).context("prctl(PR_SET_KEEPCAPS)")
}

/// Sets the effective, permitted and inheritable sets, then the ambient set, from the spec
/// (after the user switch). An absent set is empty, as in runc.
pub fn apply(caps: &LinuxCapabilities) -> anyhow::Result<()> {
    let last = last_cap();
    let sets = CapSets {
        effective: mask(caps.effective().as_ref(), last),
        permitted: mask(caps.permitted().as_ref(), last),
        inheritable: mask(caps.inheritable().as_ref(), last),
    };
    kernel::capset(&sets).with_context(|| {
        format!(
            "capset (effective {:#x}, permitted {:#x}, inheritable {:#x})",
            sets.effective, sets.permitted, sets.inheritable
        )
    })?;
    // Kernels without ambient capabilities (before 4.3) answer EINVAL: nothing to clear there.
    match kernel::ambient_clear_all() {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
        Err(err) => return Err(err).context("clear the ambient capabilities"),
    }
    // As runc: an ambient capability that is not both permitted and inheritable (EPERM) is
    // left out, and the process runs without it.
    let ambient = mask(caps.ambient().as_ref(), last);
    for cap in (0..=last.min(63)).filter(|cap| ambient & (1u64 << cap) != 0) {
        match kernel::ambient_raise(cap) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("raise ambient capability {}", NAMES[cap as usize]))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_numbers() {
        assert_eq!(number(&Capability::Chown), Some(0));
        assert_eq!(number(&Capability::SysAdmin), Some(21));
        assert_eq!(number(&Capability::NetBindService), Some(10));
        assert_eq!(number(&Capability::CheckpointRestore), Some(40));
    }

    #[test]
    fn masks_skip_capabilities_the_kernel_lacks() {
        let caps: Capabilities =
            [Capability::Chown, Capability::NetAdmin, Capability::CheckpointRestore].into();
        assert_eq!(mask(Some(&caps), 40), 1 | (1 << 12) | (1 << 40));
        assert_eq!(mask(Some(&caps), 37), 1 | (1 << 12));
        assert_eq!(mask(None, 40), 0);
    }
}
