//! The built-in backend running the real `bazaar-vmm` under KVM with hand-made guests (this
//! host's KVM cannot run Linux; `vmm/tests/linux_boot.rs` covers a Linux boot where it can):
//! the guest's exit, `stop`, and failures, each checked for leftover processes and sockets.
//! Skipped loudly without /dev/kvm or without the VMM binary.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bazaar_hypervisor::builtin::{Builtin, BuiltinPaths};
use bazaar_hypervisor::{Acceleration, Device, Hypervisor, VmConfig, VmExit};
use bazaar_tests::tiny_kernel;
use common::{is_gone, logger};

const SOCKETS: [&str; 3] = ["vsock.sock", "virtiofsd.sock", "virtiofsd.sock.pid"];

/// The VMM next to this test's binary (cargo builds the workspace's binaries into the same
/// profile directory), or `BAZAAR_TEST_VMM`.
fn vmm_binary(test: &str) -> Option<PathBuf> {
    let path = match std::env::var_os("BAZAAR_TEST_VMM") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("bazaar-vmm")))
            .unwrap_or_default(),
    };
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        bazaar_tests::skip::skip(test, &format!("/dev/kvm is not usable here ({e})"));
        return None;
    }
    if !path.is_file() {
        bazaar_tests::skip::skip(
            test,
            &format!("no VMM at {} (build the workspace, or set BAZAAR_TEST_VMM)", path.display()),
        );
        return None;
    }
    Some(path)
}

struct TestVm {
    vm: Builtin,
    run_dir: PathBuf,
    console: tokio::sync::mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
}

/// A built-in backend VM whose "kernel" is `code` and whose initrd is a placeholder file (the
/// hand-made kernels never read it).
fn test_vm(vmm: PathBuf, code: &[u8]) -> TestVm {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("kernel.elf");
    std::fs::write(&kernel, tiny_kernel::elf(code)).expect("write kernel");
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, b"unused").expect("write initrd");
    let run_dir = dir.path().join("run");
    let config = VmConfig {
        sandbox_id: "builtin-test".into(),
        vcpus: 1,
        memory_mib: 64,
        kernel,
        initrd,
        extra_kernel_params: String::new(),
        run_dir: run_dir.clone(),
        acceleration: Acceleration::Kvm,
        tcg_cache_mib: 0,
    };
    let paths = BuiltinPaths { vmm, ..BuiltinPaths::default() };
    let (sink, console) = tokio::sync::mpsc::unbounded_channel();
    let vm = Builtin::new(config, paths, logger()).expect("new").with_console_sink(sink);
    TestVm { vm, run_dir, console, _dir: dir }
}

fn assert_clean(run_dir: &Path, records: &[bazaar_hypervisor::ProcessRecord]) {
    for record in records {
        assert!(is_gone(record), "{} (pid {}) still runs", record.name, record.pid);
    }
    for name in SOCKETS {
        assert!(!run_dir.join(name).exists(), "{name} left in {}", run_dir.display());
    }
}

/// A guest that prints and resets: the VMM exits 0, the backend reports the exit, the console
/// line reached the sink, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_reset_ends_the_vm_with_status_0() {
    let Some(vmm) = vmm_binary("guest_reset_ends_the_vm_with_status_0") else { return };
    let code = [tiny_kernel::print("hello from a tiny guest\n"), tiny_kernel::reset()].concat();
    let mut t = test_vm(vmm, &code);
    t.vm.start().await.expect("start");
    let records = t.vm.processes();
    let exit = tokio::time::timeout(Duration::from_secs(30), t.vm.wait()).await.expect("no exit");
    assert_eq!(exit, VmExit::Exited { code: Some(0), signal: None });
    let line = tokio::time::timeout(Duration::from_secs(5), t.console.recv())
        .await
        .expect("no console line")
        .expect("console closed");
    assert_eq!(line.trim_end(), "hello from a tiny guest");
    // The guest may have ended before `start` returned: then nothing is running any more.
    assert!(records.iter().all(|r| r.name == "bazaar-vmm"), "{records:?}");
    assert_clean(&t.run_dir, &records);
    t.vm.stop().await.expect("stop after exit");
    assert_eq!(t.vm.wait().await, exit);
}

/// A guest that never stops: the agent socket exists while it runs, and `stop` ends the VMM
/// by its PID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_running_vmm() {
    let Some(vmm) = vmm_binary("stop_ends_a_running_vmm") else { return };
    let mut t = test_vm(vmm, &tiny_kernel::spin());
    t.vm.start().await.expect("start");
    assert!(t.vm.agent_socket().exists(), "no hybrid-vsock socket while running");
    let pid = t.vm.vmm_pid().expect("vmm pid");
    let records = t.vm.processes();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].pid, pid);
    t.vm.stop().await.expect("stop");
    assert_eq!(t.vm.wait().await, VmExit::Stopped);
    assert!(t.vm.processes().is_empty());
    assert_clean(&t.run_dir, &records);
}

/// A shared directory is served by virtiofsd, which the VMM connects to; both end together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_directory_runs_virtiofsd_beside_the_vmm() {
    let Some(vmm) = vmm_binary("shared_directory_runs_virtiofsd_beside_the_vmm") else { return };
    let mut t = test_vm(vmm, &tiny_kernel::spin());
    if !BuiltinPaths::default().virtiofsd.is_file() {
        bazaar_tests::skip::skip(
            "shared_directory_runs_virtiofsd_beside_the_vmm",
            "no virtiofsd (make deps)",
        );
        return;
    }
    let shared = t.run_dir.with_file_name("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    t.vm.add_device(Device::SharedFs { tag: "bazaarfs".into(), host_dir: shared }).expect("fs");
    t.vm.start().await.expect("start");
    let records = t.vm.processes();
    let names: Vec<_> = records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["virtiofsd", "bazaar-vmm"]);
    t.vm.stop().await.expect("stop");
    assert_clean(&t.run_dir, &records);
}

/// A VMM crash (SIGKILL, as a seccomp kill or a fault would end it) is an exit the backend
/// reports with its signal; it then ends virtiofsd and removes the sockets by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_vmm_is_reported_and_cleaned_up() {
    let Some(vmm) = vmm_binary("a_crashed_vmm_is_reported_and_cleaned_up") else { return };
    if !BuiltinPaths::default().virtiofsd.is_file() {
        bazaar_tests::skip::skip(
            "a_crashed_vmm_is_reported_and_cleaned_up",
            "no virtiofsd (make deps)",
        );
        return;
    }
    let mut t = test_vm(vmm, &tiny_kernel::spin());
    let shared = t.run_dir.with_file_name("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    t.vm.add_device(Device::SharedFs { tag: "bazaarfs".into(), host_dir: shared }).expect("fs");
    t.vm.start().await.expect("start");
    let records = t.vm.processes();
    let pid = t.vm.vmm_pid().expect("vmm pid");
    // Ended from outside, by its PID, as a crash would end it.
    // SAFETY: kill(2) touches no memory; the PID is the backend's unreaped child.
    let killed = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill: {}", std::io::Error::last_os_error());
    let exit = tokio::time::timeout(Duration::from_secs(30), t.vm.wait()).await.expect("no exit");
    assert_eq!(exit, VmExit::Exited { code: None, signal: Some(libc::SIGKILL) });
    assert!(t.vm.processes().is_empty());
    assert_clean(&t.run_dir, &records);
    t.vm.stop().await.expect("stop after a crash");
    assert_eq!(t.vm.wait().await, exit);
}

/// What the backend refuses, with errors that name the problem, and nothing started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_setups_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = VmConfig {
        sandbox_id: "bad".into(),
        vcpus: 1,
        memory_mib: 64,
        kernel: dir.path().join("no-kernel"),
        initrd: dir.path().join("no-initrd"),
        extra_kernel_params: String::new(),
        run_dir: dir.path().join("run"),
        acceleration: Acceleration::Tcg,
        tcg_cache_mib: 0,
    };
    let err = Builtin::new(config.clone(), BuiltinPaths::default(), logger()).err().expect("tcg");
    assert!(err.to_string().contains("tcg"), "{err}");

    // "auto" on a host whose KVM cannot run Linux is refused before anything starts.
    if bazaar_tests::kernel::kvm_cannot_run_linux().is_some() {
        let auto = VmConfig { acceleration: Acceleration::Auto, ..config.clone() };
        let err = Builtin::new(auto, BuiltinPaths::default(), logger()).err().expect("auto");
        assert!(err.to_string().contains("needs KVM that can run Linux"), "{err}");
    }

    let missing = dir.path().join("no-vmm");
    let config = VmConfig { acceleration: Acceleration::Kvm, ..config };
    let paths = BuiltinPaths { vmm: missing.clone(), ..BuiltinPaths::default() };
    let mut vm = Builtin::new(config, paths, logger()).expect("new");
    let err = vm.start().await.expect_err("no VMM binary");
    assert!(format!("{err:#}").contains(&missing.display().to_string()), "{err:#}");
    assert!(vm.processes().is_empty());
}
