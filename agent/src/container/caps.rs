//! Capabilities, the simple way for now: the container process's bounding set is cut down to
//! the spec's `process.capabilities.bounding`. A process running as root then gets exactly those
//! capabilities at exec; a non-root process gets none. (Effective/permitted/inheritable/ambient
//! sets as such are not applied yet.)

use std::collections::HashSet;

use anyhow::Context;
use oci_spec::runtime::{Capabilities, Capability};

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
            Err(err) => return Err(err).with_context(|| format!("drop capability {cap} from the bounding set")),
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
}
