//! The guest image `make guest-image` builds, booted by the built-in VMM through the `builtin`
//! backend, up to the agent answering its health check over hybrid vsock; then `stop` leaves
//! no process or socket. Runs only where the host's KVM can run Linux, skipped loudly
//! elsewhere (all our build hosts: their KVM is nested and emulation-based).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bazaar_hypervisor::builtin::{Builtin, BuiltinPaths};
use bazaar_hypervisor::{Acceleration, Device, Hypervisor, VmConfig};
use bazaar_runtime::agent_client;

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

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
    let guest = workspace().join("build/guest");
    let (kernel, initrd) = (guest.join("bzImage"), guest.join("initrd.cpio"));
    // The VMM cargo built next to this test's binary.
    let vmm = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("bazaar-vmm")))
        .expect("test binary path");
    for path in [&kernel, &initrd, &vmm] {
        assert!(path.exists(), "{} is missing: run `make build guest-image`", path.display());
    }
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
    eprintln!("TIMING: built-in VMM start to a healthy agent: {elapsed:?}");
    for record in &records {
        let same_process =
            bazaar_hypervisor::process_start_time(record.pid).ok() == Some(record.start_time);
        assert!(!same_process, "{} (pid {}) still runs", record.name, record.pid);
    }
    assert!(vm.processes().is_empty());
}
