//! The guest image `make guest-image` builds, booted by the built-in VMM through the `builtin`
//! backend, up to the agent answering its health check over hybrid vsock; then `stop` leaves
//! no process or socket.
//!
//! `a_container_runs_to_its_exit_on_the_builtin_vmm` goes further, through the runtime's task
//! API (what the shim maps containerd's calls onto): a busybox container in a bundle is created,
//! started, waited for and deleted, and its output and exit status come back.
//!
//! Both direct tests run where the host's KVM can run Linux. Our build
//! hosts' KVM cannot (it is nested and emulation-based), so `..._under_nested_kvm` runs them
//! inside the nested-KVM lab (`bazaar_tests::nested_kvm`): an L1 VM under QEMU's TCG
//! whose KVM runs on emulated AMD SVM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bazaar_hypervisor::builtin::{Builtin, BuiltinPaths};
use bazaar_hypervisor::{Acceleration, Device, Hypervisor, VmConfig};
use bazaar_runtime::agent_client;
use bazaar_runtime::config::{Config, HypervisorKind};
use bazaar_runtime::process::StdioPaths;
use bazaar_runtime::tasks::{CreateTask, Tasks};

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole L1 run: its boot, then the guest's boot and the health check, all under TCG.
const NESTED_TIMEOUT: Duration = Duration::from_secs(300);
/// What the direct test prints once the agent answered.
const HEALTHY: &str = "TIMING: built-in VMM start to a healthy agent:";
/// Create, start, wait and delete of the container, boot included.
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(180);
/// What the container test prints once the container's output and exit came back.
const CONTAINER_RAN: &str = "TIMING: built-in VMM: create, start and exit of a container:";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_to_its_exit_on_the_builtin_vmm() {
    let test = "runtime builtin_linux_boot::a_container_runs_to_its_exit_on_the_builtin_vmm";
    if let Some(reason) = bazaar_tests::kernel::kvm_cannot_run_linux() {
        bazaar_tests::skip::skip(test, &reason);
        return;
    }
    let [kernel, initrd, vmm] = inputs();
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle");
    bazaar_tests::image::populate_rootfs(&bundle.join("rootfs")).expect("busybox rootfs");
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().expect("default spec has a process");
    process.set_terminal(Some(false));
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "echo hello from $(uname -r); exit 3".into(),
    ]));
    spec.set_process(Some(process));
    spec.save(bundle.join("config.json")).expect("config.json");

    let mut config = Config::default();
    config.hypervisor.name = HypervisorKind::Builtin;
    config.hypervisor.kernel = kernel;
    config.hypervisor.initrd = initrd;
    config.hypervisor.vmm_path = vmm;
    config.runtime.run_dir = dir.path().join("run");
    // A generous wait for the agent: under the nested-KVM lab everything runs under TCG.
    config.runtime.agent_timeout_secs = 120;
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    for file in [&stdout, &stderr] {
        std::fs::write(file, b"").expect("output file");
    }
    let stdio = StdioPaths {
        stdin: String::new(),
        stdout: stdout.display().to_string(),
        stderr: stderr.display().to_string(),
        terminal: false,
    };
    // Debug records on stderr: the lab's console is all a failure under nested KVM leaves.
    let logger = bazaar_runtime::logging::logger(std::io::stderr(), slog::Level::Debug);
    let (events, _events_rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks = Tasks::new("builtin-ctr", config, logger, events);
    let started = Instant::now();
    let task = CreateTask { id: "c1".into(), bundle, rootfs: Vec::new(), stdio };
    let run = async {
        tasks.create(task).await.map_err(|err| format!("create: {err:#}"))?;
        tasks.start("c1", "").await.map_err(|err| format!("start: {err:#}"))?;
        let exit = tasks.wait("c1", "").await.map_err(|err| format!("wait: {err:#}"))?;
        tasks.delete("c1", "").await.map_err(|err| format!("delete: {err:#}"))?;
        Ok::<_, String>(exit)
    };
    let exit = tokio::time::timeout(CONTAINER_TIMEOUT, run).await;
    let elapsed = started.elapsed();
    let exit = match exit {
        Ok(Ok(exit)) => Ok(exit),
        Ok(Err(err)) => Err(format!("the container's life cycle failed: {err}")),
        Err(_) => Err(format!("the container did not exit within {CONTAINER_TIMEOUT:?}")),
    };
    if exit.is_err() {
        // Whatever failed, the container goes, so that the sandbox stops and unmounts.
        let _ = tasks.kill("c1", "", 9, true).await;
        let _ = tasks.delete("c1", "").await;
    }
    let stopped = tasks.shutdown().await;
    let exit = exit.unwrap_or_else(|err| panic!("{err}"));
    assert!(stopped, "no container is left, so the sandbox stops");
    let output = std::fs::read_to_string(&stdout).expect("stdout");
    assert_eq!(exit.status, 3, "exit status of the container (stdout {output:?})");
    let release = bazaar_tests::kernel::bzimage_release(&inputs()[0]).expect("guest release");
    assert_eq!(output, format!("hello from {release}\n"), "the guest kernel answered uname");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("run"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the sandbox left {left:?} in its run dir");
    eprintln!("{CONTAINER_RAN} {elapsed:?}");
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
    let virtiofsd = BuiltinPaths::default().virtiofsd;
    // Inside, /proc/cpuinfo has svm and /dev/kvm is kvm_amd's: the direct tests run for real.
    // The container's rootfs is made from the host's busybox.
    let out = lab
        .run_this_test_binary(
            &[&vmm, &virtiofsd],
            &[&kernel, &initrd, Path::new("/bin/busybox")],
            "",
            NESTED_TIMEOUT,
        )
        .expect("run the L1 VM");
    let console = out.stdout.replace('\r', "");
    let verdict = |text: &str| console.contains(text);
    assert!(
        verdict("nested-kvm: /dev/kvm ready")
            && verdict(HEALTHY)
            && verdict(CONTAINER_RAN)
            && verdict("test result: ok. 2 passed")
            && verdict(&format!("{} 0", bazaar_tests::nested_kvm::EXIT_MARKER))
            && !verdict("SKIPPED"),
        "the built-in VMM did not run the guest image's agent and a container under nested KVM:\n{}",
        out.describe()
    );
    for line in console.lines().filter(|l| l.contains(HEALTHY) || l.contains(CONTAINER_RAN)) {
        eprintln!("nested KVM (TCG-emulated SVM; not a speed figure): {line}");
    }
}
