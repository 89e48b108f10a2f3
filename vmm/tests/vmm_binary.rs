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

/// Every device kind but net (which needs a tap passed in; the balloon included) on the real binary under `--seccomp
/// kill`: the device threads start and install their filters, the vsock worker accepts a host
/// client and turns it away (no driver yet) without the filter killing the VMM, which then
/// runs on until the test ends it with SIGTERM (not SIGSYS, which a filter would send).
#[test]
fn devices_run_under_seccomp_kill() {
    if !kvm_usable("devices_run_under_seccomp_kill") {
        return;
    }
    const VIRTIOFSD: &str = "/usr/local/libexec/bazaar/virtiofsd";
    if !Path::new(VIRTIOFSD).exists() {
        bazaar_tests::skip::skip("devices_run_under_seccomp_kill", "no virtiofsd (make deps)");
        return;
    }
    use std::io::{Read, Write};
    let dir = TempDir::new("bzt-vmm").expect("temp dir");
    // A guest that waits (spins) until the test lets it go by writing a flag the guest polls
    // would need more code; instead it spins a fixed number of iterations, then resets.
    let code = [
        tiny_kernel::print("devices up\n"),
        vec![0x48, 0xb9, 0, 0, 0, 0x40, 0, 0, 0, 0], // mov rcx, 0x40000000
        vec![0x48, 0xff, 0xc9, 0x75, 0xfb],          // loop: dec rcx; jnz loop
        tiny_kernel::reset(),
    ]
    .concat();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, tiny_kernel::elf(&code)).expect("write kernel");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("write disk");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    let fs_socket = dir.path().join("fs.sock");
    let mut virtiofsd = Command::new(VIRTIOFSD)
        .arg(format!("--socket-path={}", fs_socket.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        .arg("--sandbox=none")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start virtiofsd");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fs_socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let vsock = dir.path().join("vsock.sock");
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_bazaar-vmm"))
        .args(["--kernel".as_ref(), kernel.as_os_str()])
        .args(["--memory-mib", "64", "--seccomp", "kill"])
        .arg("--vsock")
        .arg(format!("cid=3,socket={}", vsock.display()))
        .arg("--disk")
        .arg(format!("path={},readonly=on", disk.display()))
        .arg("--fs")
        .arg(format!("tag=shared,socket={}", fs_socket.display()))
        .args(["--balloon", "free-page-reporting=on"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start bazaar-vmm");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !vsock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let turned_away = std::os::unix::net::UnixStream::connect(&vsock).map(|mut client| {
        client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = client.write_all(b"CONNECT 1024\n");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).map(|_| answer)
    });

    // Still running after serving the client: the filters allowed what the devices did.
    std::thread::sleep(Duration::from_millis(200));
    let still_running = vmm.try_wait().expect("try_wait").is_none();
    // SIGTERM by PID: the child is ours and not reaped yet, so the PID is still its own.
    // SAFETY: kill(2) touches no memory.
    unsafe { libc::kill(vmm.id() as libc::pid_t, libc::SIGTERM) };
    let status = vmm.wait().expect("wait for bazaar-vmm");
    let _ = virtiofsd.kill();
    let _ = virtiofsd.wait();
    let mut stdout = String::new();
    let mut stderr = String::new();
    vmm.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("stdout");
    vmm.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    use std::os::unix::process::ExitStatusExt;
    assert!(still_running, "bazaar-vmm ended early with {status:?}: {stderr}");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}: {stderr}");
    assert_eq!(stdout, "devices up\n", "{stderr}");
    // Closed on the client (end of file, or a reset when its CONNECT line was still unread).
    match turned_away.expect("connect to the vsock socket") {
        Ok(answer) => assert!(answer.is_empty(), "before the driver, no OK: {answer:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}
