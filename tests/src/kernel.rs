//! Facts about kernels: the host's release and the release a bzImage was built as.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The host kernel's release (`uname -r`).
pub fn host_release() -> Result<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    Ok(text.trim().to_string())
}

/// The release of an x86 bzImage, from its setup header.
///
/// The header's `kernel_version` field (offset 0x20E, boot protocol >= 2.00) points, less 0x200,
/// at a NUL-terminated string such as `6.1.123 (root@host) #1 SMP ...`; the release is its first
/// word, which is what `uname -r` prints inside the guest.
pub fn bzimage_release(path: &Path) -> Result<String> {
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    release_from_bytes(&data).with_context(|| format!("{} is not a bzImage", path.display()))
}

fn release_from_bytes(data: &[u8]) -> Result<String> {
    if data.len() < 0x210 || &data[0x202..0x206] != b"HdrS" {
        bail!("no setup header (HdrS) at 0x202");
    }
    let ptr = u16::from_le_bytes([data[0x20E], data[0x20F]]) as usize;
    if ptr == 0 {
        bail!("setup header has no kernel_version string");
    }
    let start = ptr + 0x200;
    let tail = data.get(start..).context("kernel_version pointer beyond the file")?;
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len()).min(256);
    let text = String::from_utf8_lossy(&tail[..end]);
    let release = text.split_whitespace().next().unwrap_or_default().to_string();
    if release.is_empty() {
        bail!("empty kernel_version string");
    }
    Ok(release)
}

/// Why this host's KVM cannot run a Linux guest, or `None` when it can: hardware
/// virtualization (vmx or svm in /proc/cpuinfo) and /dev/kvm. Our build machines' KVM is nested
/// and emulation-based, without either flag: Linux crawls there and dies with an emulation
/// failure.
pub fn kvm_cannot_run_linux() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw_virt {
        return Some(
            "this host's KVM cannot run a Linux guest (no vmx/svm in /proc/cpuinfo)".into(),
        );
    }
    if std::fs::metadata("/dev/kvm").is_err() {
        return Some("/dev/kvm is absent".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_release_from_setup_header() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20E..0x210].copy_from_slice(&0x0300u16.to_le_bytes());
        let s = b"6.1.158-bazaar (root@build) #1 SMP\0";
        img[0x500..0x500 + s.len()].copy_from_slice(s);
        assert_eq!(release_from_bytes(&img).unwrap(), "6.1.158-bazaar");
    }

    #[test]
    fn rejects_non_bzimage() {
        assert!(release_from_bytes(&[0u8; 0x400]).is_err());
    }

    #[test]
    fn host_release_is_known() {
        assert!(!host_release().unwrap().is_empty());
    }
}
