//! The `bazaar-vmm` command itself, on a tiny ELF "kernel" built here: it boots it with the
//! seccomp filters killing on any system call they do not allow, shows its console on stdout
//! and exits 0 when the guest resets. Each test skips (loudly) where /dev/kvm cannot be opened.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bazaar_tests::process::{self, Output};
use bazaar_tests::tempdir::TempDir;
use bazaar_tests::tiny_kernel;
use common::kvm_usable;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const LINE: &str = "hello from a tiny ELF kernel\n";

/// Writes the tiny kernel into `dir`.
fn write_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("vmlinux");
    std::fs::write(
        &path,
        tiny_kernel::elf(&[tiny_kernel::print(LINE), tiny_kernel::reset()].concat()),
    )
    .expect("write the test kernel");
    path
}

fn run_vmm(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bazaar-vmm"));
    cmd.args(args);
    process::run(cmd, None, RUN_TIMEOUT).expect("start bazaar-vmm")
}

fn boot_tiny_kernel(vcpus: &str) -> Output {
    let dir = TempDir::new("bzt-vmm").expect("temp dir");
    let kernel = write_kernel(dir.path());
    let kernel = kernel.to_str().expect("UTF-8 temp path");
    run_vmm(&["--kernel", kernel, "--memory-mib", "64", "--vcpus", vcpus, "--seccomp", "kill"])
}

#[test]
fn boots_a_kernel_under_seccomp_kill_and_exits_0_on_reset() {
    if !kvm_usable("boots_a_kernel_under_seccomp_kill_and_exits_0_on_reset") {
        return;
    }
    let out = boot_tiny_kernel("1");
    out.assert_success();
    assert_eq!(out.stdout, LINE, "the guest's console is stdout: {}", out.describe());
    assert!(out.stderr.contains("guest stopped: Reset"), "{}", out.describe());
}

#[test]
fn two_vcpus_boot_with_the_ap_waiting() {
    if !kvm_usable("two_vcpus_boot_with_the_ap_waiting") {
        return;
    }
    // vCPU 1 waits for an INIT/SIPI this kernel never sends; the reset ends the VM all the same.
    let out = boot_tiny_kernel("2");
    out.assert_success();
    assert_eq!(out.stdout, LINE, "{}", out.describe());
}

#[test]
fn a_missing_kernel_exits_1_naming_the_path() {
    if !kvm_usable("a_missing_kernel_exits_1_naming_the_path") {
        return;
    }
    let dir = TempDir::new("bzt-vmm").expect("temp dir");
    let missing = dir.path().join("no-such-vmlinux");
    let missing = missing.to_str().expect("UTF-8 temp path");
    let out = run_vmm(&["--kernel", missing, "--memory-mib", "64"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains(missing), "the error names the path: {}", out.describe());
}
