//! Kubernetes pods through containerd's CRI plugin (`runtime.v1` over gRPC, as the kubelet
//! calls it), with the runtime handler `runc` (the reference) and `bazaar` (one VM per pod):
//! RunPodSandbox, two busybox containers in the pod, ExecSync (output, exit code, timeout),
//! ContainerStatus, the CRI log file, StopPodSandbox and RemovePodSandbox; then the leak check,
//! which here also covers the pod's network namespace, veth and cgroups.

use std::time::{Duration, Instant};

use bazaar_tests::cri::api::{ContainerState, PodSandboxState};
use bazaar_tests::cri::pods::{processes_of_test, Pods};
use bazaar_tests::cri::setup::{BAZAAR_HANDLER, RUNC_HANDLER};
use bazaar_tests::fixture::{Runtime, TestEnv};

use bazaar_tests::both_runtimes;

both_runtimes!(pod_lifecycle, containers_end_and_go);

fn handler(rt: Runtime) -> &'static str {
    match rt {
        Runtime::Runc => RUNC_HANDLER,
        Runtime::Bazaar => BAZAAR_HANDLER,
    }
}

/// Waits until the CRI log file of container `id` (the path ContainerStatus gives) holds `line`
/// on `stream`, in the CRI format: `<RFC 3339 time> <stream> F <line>`.
#[track_caller]
fn wait_for_log_line(pods: &Pods<'_>, id: &str, stream: &str, line: &str) {
    let path = pods.container_status(id).log_path;
    let expect = format!(" {stream} F {line}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().any(|l| l.ends_with(&expect)) {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: no line ending {expect:?} in {text:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pod_lifecycle(rt: Runtime) {
    let name = format!("e2e_cri_pod-lifecycle-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let pod = pods.run_pod("web", handler(rt));
    assert!(pods.list_pods().contains(&pod.id));

    let a = pods.create_container(&pod, "a", &["sh", "-c", "echo hello-from-a; exec sleep 1000"]);
    let b =
        pods.create_container(&pod, "b", &["sh", "-c", "echo hello-from-b >&2; exec sleep 1000"]);
    pods.start_container(&a);
    pods.start_container(&b);
    for id in [&a, &b] {
        let status = pods.container_status(id);
        assert_eq!(status.state, ContainerState::ContainerRunning as i32, "{status:?}");
    }
    assert_eq!(pods.list_containers(&pod.id).len(), 2);
    let pod_status = pods.pod_status(&pod.id);
    assert_eq!(pod_status.state, PodSandboxState::SandboxReady as i32, "{pod_status:?}");
    let ip = pod_status.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    assert!(
        ip.starts_with("10.251."),
        "the pod has no address on the test network: {pod_status:?}"
    );

    // ExecSync: output on both streams and the exit code.
    let reply = pods
        .exec_sync(&a, &["sh", "-c", "echo out; echo err >&2; exit 3"], 30)
        .unwrap_or_else(|err| panic!("ExecSync: {err:#}\n{}", env.log_tail()));
    assert_eq!(String::from_utf8_lossy(&reply.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&reply.stderr), "err\n");
    assert_eq!(reply.exit_code, 3);

    // ExecSync's timeout ends the call; the container lives on.
    let started = Instant::now();
    let timed_out = pods.exec_sync(&b, &["sleep", "60"], 2);
    assert!(timed_out.is_err(), "an exec past its timeout must fail: {timed_out:?}");
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
    assert_eq!(pods.exec_ok(&b, &["echo", "alive"]), "alive\n");

    // One pod: the containers share the pod's hostname and network namespace and, under
    // Bazaar, one guest kernel (one boot id, not the host's).
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot_cmd = ["cat", "/proc/sys/kernel/random/boot_id"];
    let (boot_a, boot_b) = (pods.exec_ok(&a, &boot_cmd), pods.exec_ok(&b, &boot_cmd));
    assert_eq!(boot_a, boot_b, "the pod's containers run on different kernels");
    match rt {
        Runtime::Runc => assert_eq!(boot_a, host_boot),
        Runtime::Bazaar => assert_ne!(boot_a, host_boot, "a Bazaar pod ran on the host kernel"),
    }
    for id in [&a, &b] {
        assert_eq!(pods.exec_ok(id, &["hostname"]), "web\n");
    }
    // The pod's shared namespaces (CRI's NamespaceMode POD) are one for both containers.
    for ns in ["net", "ipc", "uts"] {
        let path = format!("/proc/self/ns/{ns}");
        let cmd = ["readlink", path.as_str()];
        let (in_a, in_b) = (pods.exec_ok(&a, &cmd), pods.exec_ok(&b, &cmd));
        assert_eq!(in_a, in_b, "the pod's containers have different {ns} namespaces");
    }
    // The exec that timed out was killed, not left running.
    let ps = pods.exec_ok(&b, &["ps", "-o", "args"]);
    assert!(!ps.contains("sleep 60"), "the timed-out exec still runs:\n{ps}");

    // The kubelet's resource figures: memory in use and CPU time, per container and per pod.
    for id in [&a, &b] {
        let stats = pods.container_stats(id);
        let memory = stats.memory.and_then(|m| m.working_set_bytes).map(|v| v.value);
        assert!(memory.unwrap_or(0) > 0, "no memory figure for {id}: {memory:?}");
        assert!(stats.cpu.and_then(|c| c.usage_core_nano_seconds).is_some(), "no CPU figure");
    }
    assert_eq!(pods.list_container_stats(&pod.id).len(), 2);

    // One shim for the pod and, under Bazaar, one VM.
    let token = env.token();
    let shim = match rt {
        Runtime::Runc => "containerd-shim-runc-v2",
        Runtime::Bazaar => "containerd-shim-bazaar-v2",
    };
    let shims = processes_of_test(&token, shim);
    assert_eq!(shims.len(), 1, "one shim per pod: {shims:?}");
    let vms = processes_of_test(&token, "qemu-system");
    assert_eq!(vms.len(), if rt == Runtime::Bazaar { 1 } else { 0 }, "{vms:?}");

    // The containers' output reaches the CRI log files, in the CRI log format.
    wait_for_log_line(&pods, &a, "stdout", "hello-from-a");
    wait_for_log_line(&pods, &b, "stderr", "hello-from-b");

    pods.stop_pod(&pod.id);
    for id in [&a, &b] {
        let status = pods.container_status(id);
        assert_eq!(status.state, ContainerState::ContainerExited as i32, "{status:?}");
    }
    pods.remove_pod(&pod.id);
    assert!(pods.list_pods().is_empty());
    drop(pods);
    env.finish();
}

/// Containers ending inside a running pod: one exits by itself (its exit code reaches
/// ContainerStatus), one ignores SIGTERM and is killed when StopContainer's grace runs out; both
/// are removed while the pod (and, under Bazaar, its VM) lives on and still runs a new one.
fn containers_end_and_go(rt: Runtime) {
    let name = format!("e2e_cri_pod-end-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let pod = pods.run_pod("ends", handler(rt));

    let exits = pods.create_container(&pod, "exits", &["sh", "-c", "echo bye; exit 3"]);
    // An ignored SIGTERM survives exec: only the SIGKILL after the grace period ends it.
    let stubborn = pods.create_container(
        &pod,
        "stubborn",
        &["sh", "-c", "trap '' TERM; echo ready; exec sleep 1000"],
    );
    pods.start_container(&exits);
    pods.start_container(&stubborn);
    let status =
        pods.wait_for_state(&exits, ContainerState::ContainerExited, Duration::from_secs(60));
    assert_eq!(status.exit_code, 3, "{status:?}");

    wait_for_log_line(&pods, &stubborn, "stdout", "ready");
    let started = Instant::now();
    pods.stop_container(&stubborn, 2);
    let status = pods.container_status(&stubborn);
    assert_eq!(status.state, ContainerState::ContainerExited as i32, "{status:?}");
    assert_eq!(status.exit_code, 137, "killed after the grace period: {status:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(30), "took {took:?}");

    pods.remove_container(&exits);
    pods.remove_container(&stubborn);
    assert!(pods.list_containers(&pod.id).is_empty());

    let again = pods.create_container(&pod, "again", &["sleep", "1000"]);
    pods.start_container(&again);
    assert_eq!(pods.exec_ok(&again, &["echo", "still here"]), "still here\n");
    let vms = processes_of_test(&env.token(), "qemu-system");
    assert_eq!(vms.len(), if rt == Runtime::Bazaar { 1 } else { 0 }, "{vms:?}");

    pods.stop_pod(&pod.id);
    pods.remove_pod(&pod.id);
    drop(pods);
    env.finish();
}
