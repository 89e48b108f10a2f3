//! The guest image `make guest-image` builds, booted by the built-in VMM through the `builtin`
//! backend, up to the agent answering its health check over hybrid vsock; then `stop` leaves
//! no process or socket.
//!
//! `guest_image_boots_to_a_healthy_agent` runs where the host's KVM can run Linux. Our build
//! hosts' KVM cannot (it is nested and emulation-based), so `..._under_nested_kvm` runs that
//! same test inside the nested-KVM lab (`bazaar_tests::nested_kvm`): an L1 VM under QEMU's TCG
//! whose KVM runs on emulated AMD SVM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bazaar_hypervisor::builtin::{Builtin, BuiltinPaths};
use bazaar_hypervisor::{Acceleration, Device, Hypervisor, VmConfig};
use bazaar_runtime::agent_client;

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole L1 run: its boot, then the guest's boot and the health check, all under TCG.
const NESTED_TIMEOUT: Duration = Duration::from_secs(480);
/// What the direct test prints once the agent answered.
const HEALTHY: &str = "TIMING: built-in VMM start to a healthy agent:";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_image_boots_to_a_healthy_agent() {
    let test = "runtime builtin_linux_boot::guest_image_boots_to_a_healthy_agent";
    if let Some(reason) = bazaar_tests::kernel::kvm_cannot_run_linux() {
        bazaar_tests::skip::skip(test, &reason);
        return;
    }
    let [kernel, initrd, vmm] = inputs();
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    let config = VmConfig {
        sandbox_id: "builtin-linux".into(),
        vcpus: 2,
        memory_mib: 256,
        kernel,
        initrd,
        extra_kernel_params: String::new(),
        run_dir: dir.path().join("run"),
        acceleration: Acceleration::Kvm,
        tcg_cache_mib: 0,
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let paths = BuiltinPaths { vmm, ..BuiltinPaths::default() };
    let mut vm = Builtin::new(config, paths, logger.clone()).expect("new");
    vm.add_device(Device::SharedFs { tag: "bazaarfs".into(), host_dir: shared }).expect("fs");
    let started = Instant::now();
    vm.start().await.expect("start the built-in VMM");
    let records = vm.processes();
    let agent = agent_client::connect(&vm.agent_socket(), AGENT_TIMEOUT, &logger).await;
    let elapsed = started.elapsed();
    vm.stop().await.expect("stop");
    agent.expect("agent health check over hybrid vsock");
    eprintln!("{HEALTHY} {elapsed:?}");
    for record in &records {
        let same_process =
            bazaar_hypervisor::process_start_time(record.pid).ok() == Some(record.start_time);
        assert!(!same_process, "{} (pid {}) still runs", record.name, record.pid);
    }
    assert!(vm.processes().is_empty());
}

/// The guest kernel, the initrd and the VMM cargo built next to this test's binary.
fn inputs() -> [PathBuf; 3] {
    let guest = workspace().join("build/guest");
    let vmm = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("bazaar-vmm")))
        .expect("test binary path");
    let inputs = [guest.join("bzImage"), guest.join("initrd.cpio"), vmm];
    for path in &inputs {
        assert!(path.exists(), "{} is missing: run `make build guest-image`", path.display());
    }
    inputs
}

#[test]
fn guest_image_boots_to_a_healthy_agent_under_nested_kvm() {
    let test = "runtime builtin_linux_boot::guest_image_boots_to_a_healthy_agent_under_nested_kvm";
    let lab = match bazaar_tests::nested_kvm::Lab::find() {
        Ok(lab) => lab,
        Err(reason) => return bazaar_tests::skip::skip(test, &reason),
    };
    let [kernel, initrd, vmm] = inputs();
    let this_test = std::env::current_exe().expect("test binary");
    let virtiofsd = BuiltinPaths::default().virtiofsd;
    let mut image = bazaar_tests::nested_kvm::L1Image::new().expect("L1 image");
    for program in [&this_test, &vmm, &virtiofsd] {
        image.add_program(program).expect("program for the L1 image");
    }
    image.add(&kernel).expect("kernel");
    image.add(&initrd).expect("initrd");
    // Inside, /proc/cpuinfo has svm and /dev/kvm is kvm_amd's: the direct test runs for real.
    let workload = format!(
        "cd /tmp && {} --exact guest_image_boots_to_a_healthy_agent --nocapture --test-threads=1",
        quoted(&this_test)
    );
    let out = lab.run(image, &workload, 1024, NESTED_TIMEOUT).expect("run the L1 VM");
    let console = out.stdout.replace('\r', "");
    let verdict = |text: &str| console.contains(text);
    assert!(
        verdict("nested-kvm: /dev/kvm ready")
            && verdict(HEALTHY)
            && verdict("test result: ok. 1 passed")
            && verdict(&format!("{} 0", bazaar_tests::nested_kvm::EXIT_MARKER))
            && !verdict("SKIPPED"),
        "the built-in VMM did not boot the guest image to a healthy agent under nested KVM:\n{}",
        out.describe()
    );
    let line = console.lines().find(|l| l.contains(HEALTHY)).unwrap_or_default();
    eprintln!("nested KVM (TCG-emulated SVM; not a speed figure): {line}");
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
