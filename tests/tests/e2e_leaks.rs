//! Nothing is left behind: after a container is killed, after its shim dies, and a check that
//! the leak check itself sees leftovers (so a green run means something).

use std::time::{Duration, Instant};

use bazaar_tests::containerd::NAMESPACE;
use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::leaks;
use bazaar_tests::process::signal_pid;

use bazaar_tests::both_runtimes;

both_runtimes!(killed_container_leaves_nothing, dead_shim_leaves_nothing);

fn name(scenario: &str, rt: Runtime) -> String {
    format!("e2e_leaks-{scenario}-{rt:?}").to_lowercase()
}

/// Starts `sleep 600` detached and waits until its task is RUNNING.
fn start_sleeper(env: &TestEnv) -> String {
    let run = env.run("sleeper").args(["sleep", "600"]).detach();
    let id = run.id().to_string();
    let out = run.run();
    env.assert_success(&out);
    wait_for_status(env, &id, "RUNNING", Duration::from_secs(30));
    id
}

/// Polls `ctr tasks list` until the task of `id` has `status`.
fn wait_for_status(env: &TestEnv, id: &str, status: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let out = env.ctr(&["tasks", "list"]);
        let line = out.stdout.lines().find(|l| l.split_whitespace().next() == Some(id));
        if line.is_some_and(|l| l.split_whitespace().last() == Some(status)) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "task {id} not {status} after {timeout:?}; tasks:\n{}\nlog:\n{}",
            out.stdout,
            env.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILL to the task, then delete task and container as a user would.
fn killed_container_leaves_nothing(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("killed", rt), rt) else { return };
    let id = start_sleeper(&env);
    env.assert_success(&env.ctr(&["tasks", "kill", "--signal", "SIGKILL", &id]));
    wait_for_status(&env, &id, "STOPPED", Duration::from_secs(30));
    env.assert_success(&env.ctr(&["tasks", "delete", &id]));
    env.assert_success(&env.ctr(&["containers", "delete", &id]));
    env.finish();
}

/// The shim is killed (as in a crash): containerd runs `<shim> delete` to clean up, which must
/// end the container and everything the shim had started (VM, helpers) and remove its state.
fn dead_shim_leaves_nothing(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("dead-shim", rt), rt) else { return };
    let id = start_sleeper(&env);
    let shims: Vec<_> = leaks::processes()
        .into_iter()
        .filter(|p| p.cmdline.contains("containerd-shim") && p.cmdline.contains(&id))
        .collect();
    assert_eq!(shims.len(), 1, "expected one shim for {id}: {shims:?}");
    assert!(signal_pid(shims[0].pid, libc::SIGKILL));
    // containerd notices the dead shim and cleans up; the task then is gone or STOPPED.
    let start = Instant::now();
    loop {
        let tasks = env.ctr(&["tasks", "list"]).stdout;
        let line = tasks.lines().find(|l| l.split_whitespace().next() == Some(id.as_str()));
        if line.is_none_or(|l| !l.contains("RUNNING")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "task still RUNNING:\n{tasks}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = env.ctr(&["tasks", "delete", &id]);
    env.assert_success(&env.ctr(&["containers", "delete", &id]));
    // The socket of a killed shim stays after containerd's dead-shim cleanup with runc's shim;
    // bazaar's `shim delete` removes it, and that is checked.
    let socket = leaks::shim_socket_path(&env.containerd().socket(), NAMESPACE, &id);
    if rt == Runtime::Bazaar {
        assert!(!socket.exists(), "bazaar's shim delete left the socket {}", socket.display());
    } else if socket.exists() {
        eprintln!("note: removing the dead shim's socket {}", socket.display());
        let _ = std::fs::remove_file(&socket);
    }
    env.finish();
}

/// The harness's own check: a container left running is found (its shim, its process, its
/// rootfs mount, its state files) and cleaned up.
#[test]
fn leak_check_finds_a_running_container() {
    let Some(env) = TestEnv::start("e2e_leaks-self-check", Runtime::Runc) else { return };
    let id = start_sleeper(&env);
    let t = env.finish_report(false, Duration::from_secs(1));
    let report = t.found.report();
    assert!(
        t.found.processes.iter().any(|p| p.cmdline.contains("containerd-shim-runc-v2")),
        "shim not found:\n{report}"
    );
    assert!(
        t.found.processes.iter().any(|p| p.cmdline == "sleep 600"),
        "sleep not found:\n{report}"
    );
    assert!(
        t.found.mounts.iter().any(|m| m.mount_point.ends_with(&format!("{id}/rootfs"))),
        "rootfs mount not found:\n{report}"
    );
    let socket = t.found.paths.iter().any(|p| p.starts_with("/run/containerd/s"));
    assert!(socket, "shim socket not found:\n{report}");
    assert!(t.remaining.is_empty(), "cleanup left:\n{}", t.remaining.report());
}
