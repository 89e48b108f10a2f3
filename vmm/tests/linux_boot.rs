//! Boots the guest kernel `make guest-image` builds with the `bazaar-vmm` binary and expects
//! the kernel to reach its init: the bzImage on one vCPU, the ELF vmlinux on two. The agent's
//! health check over vsock through the built-in backend is `runtime/tests/builtin_linux_boot.rs`.
//!
//! The direct tests run where the host's KVM can run Linux (hardware virtualization: vmx or
//! svm in /proc/cpuinfo) and are skipped, loudly, elsewhere. Our build hosts' KVM cannot, so
//! `linux_boots_under_nested_kvm` runs both inside the nested-KVM lab
//! (`bazaar_tests::nested_kvm`): an L1 VM under QEMU's TCG whose KVM runs on emulated AMD SVM.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole L1 run: its boot, then two guest boots, all under TCG.
const NESTED_TIMEOUT: Duration = Duration::from_secs(480);
/// What a direct test prints once the guest reached its init.
const REACHED_INIT: &str = "LINUX-BOOT: reached init";

fn guest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/guest")
}

#[test]
fn bzimage_boots_to_init() {
    boot_to_init("vmm linux_boot::bzimage_boots_to_init", "bzImage", 1, "64-bit boot protocol");
}

#[test]
fn elf_vmlinux_boots_to_init_on_two_vcpus() {
    // The guest image's vmlinux has a PVH note (CONFIG_PVH), so it boots through PVH.
    boot_to_init(
        "vmm linux_boot::elf_vmlinux_boots_to_init_on_two_vcpus",
        "vmlinux",
        2,
        "PVH entry",
    );
}

/// Boots `build/guest/<kernel>` with the guest initrd on `vcpus` vCPUs until the kernel runs
/// /init, and checks that the VMM entered it through `protocol` and that the kernel brought all
/// the vCPUs up.
fn boot_to_init(test: &str, kernel: &str, vcpus: u32, protocol: &str) {
    if let Some(reason) = bazaar_tests::kernel::kvm_cannot_run_linux() {
        bazaar_tests::skip::skip(test, &reason);
        return;
    }
    let (kernel, initrd) = (guest_dir().join(kernel), guest_dir().join("initrd.cpio"));
    for path in [&kernel, &initrd] {
        assert!(path.exists(), "{} is missing: run `make guest-image`", path.display());
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_bazaar-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--memory-mib", "256", "--vcpus", &vcpus.to_string(), "--cmdline", "panic=-1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bazaar-vmm");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let timeline = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("Run /init") {
                let _ = tx.send(Ok(String::from_utf8_lossy(&seen).into_owned()));
                return;
            }
        }
        let _ = tx.send(Err(String::from_utf8_lossy(&seen).into_owned()));
    });
    let result = rx.recv_timeout(BOOT_TIMEOUT);
    // End the VMM this test started, whatever happened.
    let _ = child.kill();
    let _ = child.wait();
    let timeline = timeline.join().unwrap_or_default();
    let console = match result {
        Ok(Ok(console)) => console,
        Ok(Err(console)) => panic!("console ended before init:\n{console}"),
        Err(_) => panic!("no \"Run /init\" on the console within {BOOT_TIMEOUT:?}"),
    };
    assert!(
        timeline.contains(&format!("bazaar-vmm: boot: {protocol}")),
        "the VMM did not enter the kernel through its {protocol}:\n{timeline}"
    );
    let cpus = if vcpus == 1 { "1 CPU".to_string() } else { format!("{vcpus} CPUs") };
    assert!(
        console.contains(&format!("Brought up 1 node, {cpus}")),
        "the kernel did not bring up {cpus}:\n{console}"
    );
    eprintln!("{REACHED_INIT}: {} ({protocol}) on {cpus}", kernel.display());
}

#[test]
fn linux_boots_under_nested_kvm() {
    let test = "vmm linux_boot::linux_boots_under_nested_kvm";
    let lab = match bazaar_tests::nested_kvm::Lab::find() {
        Ok(lab) => lab,
        Err(reason) => return bazaar_tests::skip::skip(test, &reason),
    };
    let files: Vec<PathBuf> =
        ["bzImage", "vmlinux", "initrd.cpio"].iter().map(|f| guest_dir().join(f)).collect();
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    // Inside, /proc/cpuinfo has svm and /dev/kvm is kvm_amd's: the direct tests run for real.
    let out = lab
        .run_this_test_binary(
            &[Path::new(env!("CARGO_BIN_EXE_bazaar-vmm"))],
            &files,
            "boots_to_init",
            NESTED_TIMEOUT,
        )
        .expect("run the L1 VM");
    let console = out.stdout.replace('\r', "");
    let reached = console.lines().filter(|l| l.contains(REACHED_INIT)).count();
    assert!(
        console.contains("nested-kvm: /dev/kvm ready")
            && reached == 2
            && console.contains("test result: ok. 2 passed")
            && console.contains(&format!("{} 0", bazaar_tests::nested_kvm::EXIT_MARKER))
            && !console.contains("SKIPPED"),
        "the built-in VMM did not boot Linux to init under nested KVM:\n{}",
        out.describe()
    );
    for line in console.lines().filter(|l| l.contains(REACHED_INIT)) {
        eprintln!("nested KVM (TCG-emulated SVM): {line}");
    }
}
