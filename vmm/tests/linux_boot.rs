//! Boots the guest kernel `make guest-image` builds with the `bazaar-vmm` binary and expects
//! the kernel to reach its init. Runs only where the host's KVM can run Linux (hardware
//! virtualization: vmx or svm in /proc/cpuinfo); skipped, loudly, elsewhere. The agent's
//! health check over vsock through the built-in backend is `runtime/tests/builtin_linux_boot.rs`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn guest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/guest")
}

#[test]
fn bzimage_boots_to_init() {
    if let Some(reason) = bazaar_tests::kernel::kvm_cannot_run_linux() {
        bazaar_tests::skip::skip("vmm linux_boot::bzimage_boots_to_init", &reason);
        return;
    }
    let (kernel, initrd) = (guest_dir().join("bzImage"), guest_dir().join("initrd.cpio"));
    for path in [&kernel, &initrd] {
        assert!(path.exists(), "{} is missing: run `make guest-image`", path.display());
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_bazaar-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--memory-mib", "256", "--cmdline", "panic=-1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start bazaar-vmm");
    let mut stdout = child.stdout.take().expect("piped stdout");
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
                let _ = tx.send(Ok(()));
                return;
            }
        }
        let _ = tx.send(Err(String::from_utf8_lossy(&seen).into_owned()));
    });
    let result = rx.recv_timeout(BOOT_TIMEOUT);
    // End the VMM this test started, whatever happened.
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(console)) => panic!("console ended before init:\n{console}"),
        Err(_) => panic!("no \"Run /init\" on the console within {BOOT_TIMEOUT:?}"),
    }
}
