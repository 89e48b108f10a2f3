//! The guest's own hardening, seen from inside a container:
//! - the agent's vsock port cannot be reached: `socket(AF_VSOCK)` fails in every container
//!   process (the guest kernel has vsock loopback, and vsock is not namespaced), whatever the
//!   spec: no seccomp profile, a profile allowing every socket, `--privileged`, an exec'd process;
//! - the agent's files and processes are out of sight: PID 1 is the container's own process, the
//!   agent binary (`/init` of the initrd) and the agent's mounts (`/run/bazaar`) are not in the
//!   container's mount namespace, and a cgroup mount shows the container's own cgroup only.
//!
//! Safe path resolution inside the rootfs (no escape through `..` or symlinks) is tested by the
//! agent's unit and component tests (`agent/src/container/rootfs.rs`, `agent/tests/paths.rs`).

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::image::IMAGE;
use bazaar_tests::oci;

/// CIDs a container might try: VMADDR_CID_LOCAL (1), the host (2), the guest's own (3), and
/// VMADDR_CID_ANY. The agent listens on port 1024 (bazaar_protocols::AGENT_VSOCK_PORT).
const CIDS: &[&str] = &["1", "2", "3", "4294967295"];

#[test]
fn agent_vsock_port_is_unreachable_from_containers() {
    let Some(env) = TestEnv::start("e2e_oci_hardening-vsock", Runtime::Bazaar) else { return };
    let probe = oci::build_vsock_probe(env.containerd().dir()).expect("build the vsock probe");
    let profile = env.containerd().dir().join("allow-all.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["socket","connect"],"action":"SCMP_ACT_ALLOW"}]}"#,
    )
    .expect("write the profile");
    let bind = format!("type=bind,src={},dst=/vsock-probe,options=rbind:ro", probe.display());
    let expected: String =
        CIDS.iter().map(|cid| format!("cid {cid}: socket: {}\n", libc::EAFNOSUPPORT)).collect();
    let mut args = vec!["/vsock-probe", "1024"];
    args.extend_from_slice(CIDS);

    let cases: Vec<(&str, Vec<String>)> = vec![
        ("plain", vec![]),
        (
            "seccomp-allow-all",
            vec!["--seccomp".into(), "--seccomp-profile".into(), profile.display().to_string()],
        ),
        ("privileged", vec!["--privileged".into()]),
        ("default-seccomp", vec!["--seccomp".into()]),
    ];
    let mut failures = Vec::new();
    for (name, mut flags) in cases {
        flags.extend(["--mount".to_string(), bind.clone()]);
        let run = oci::with_flags(env.run(name).args(args.iter().copied()), &flags);
        let out = run.run();
        env.assert_success(&out);
        if out.stdout != expected {
            failures.push(format!("{name}: {:?}", out.stdout));
        }
    }

    // A process exec'd into a running container.
    let run = oci::with_flags(
        env.run("exec").args(["sleep", "600"]).detach(),
        &["--mount".to_string(), bind.clone()],
    );
    let id = env.start_detached(run);
    let out = env.exec(&id, "probe").args(args.iter().copied()).run();
    env.assert_success(&out);
    if out.stdout != expected {
        failures.push(format!("exec: {:?}", out.stdout));
    }
    env.remove_container(&id);
    assert!(failures.is_empty(), "a container reached vsock:\n{}", failures.join("\n"));
    env.finish();
}

/// What a container can see of its runtime. The processes are counted by the shell alone (a
/// glob, no pipeline), so the count is 1 (the shell itself) whatever the timing.
const VIEW: &str =
    "echo pid1=$(cat /proc/1/comm); echo agents=$(ps -o comm | grep -c -e agent -e init); \
    test -e /init && echo init-visible || echo no-init; \
    grep -c -e /run/bazaar -e bazaar-agent /proc/self/mountinfo; \
    n=0; for d in /proc/[0-9]*; do n=$((n+1)); done; echo procs=$n; \
    ls /sys/fs/cgroup | grep -c -e bzt -e default; true";

#[test]
fn agent_files_and_processes_are_out_of_sight() {
    let Some(env) = TestEnv::start("e2e_oci_hardening-view", Runtime::Bazaar) else { return };
    let cgroup =
        "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:nodev:noexec".to_string();
    let flags = vec!["--mount".to_string(), cgroup];
    let pair = oci::run_pair(&env, "view", IMAGE, &flags, &["sh", "-c", VIEW]);
    env.assert_success(&pair.runc);
    env.assert_success(&pair.bazaar);
    // sh is PID 1, no agent process, no /init, no agent mount; the container's /proc shows its
    // own processes; no directory of another cgroup under /sys/fs/cgroup.
    let expected_prefix = "pid1=sh\nagents=0\nno-init\n0\nprocs=1\n";
    assert!(pair.runc.stdout.starts_with(expected_prefix), "runc: {}", pair.runc.describe());
    assert_eq!(pair.bazaar.stdout, pair.runc.stdout, "Bazaar: {}", pair.bazaar.describe());
    env.finish();
}
