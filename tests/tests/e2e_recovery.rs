//! A running task survives a containerd restart, and a crashed sandbox is cleaned up.
//!
//! - containerd is stopped by its PID with SIGTERM and started again with the same config, root
//!   and state ([`TestEnv::restart_containerd`]): the task must still be listed RUNNING, take
//!   execs, ps and signals, and its exit must be reported, with events flowing again: complete
//!   and in order (the exec's `exec-added`, `exec-started`, `exit`), which the shim's own
//!   publisher guarantees across the restart (`shim/src/publisher.rs`).
//! - The VM of a sandbox is SIGKILLed (the `qemu-system` process whose command line holds
//!   `-name bazaar-<id>`): the task must be reported exited (a non-zero status), and `delete`
//!   must remove everything (processes, mounts, sockets, state), which the leak check verifies.
//!   runc has no VM: its variant SIGKILLs the container's init process from the host, the
//!   nearest thing, and expects runc's report of it (137). (A killed shim: `e2e_leaks.rs`.)

use std::time::{Duration, Instant};

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::leaks;
use bazaar_tests::process::signal_pid;

use bazaar_tests::both_runtimes;

both_runtimes!(survives_containerd_restart, killed_sandbox_is_cleaned_up);

const EVENT_WAIT: Duration = Duration::from_secs(30);

fn name(scenario: &str, rt: Runtime) -> String {
    format!("e2e_recovery-{scenario}-{rt:?}").to_lowercase()
}

fn survives_containerd_restart(rt: Runtime) {
    let Some(mut env) = TestEnv::start(&name("restart", rt), rt) else { return };
    let id = env.start_detached(env.run("survivor").args(["sleep", "600"]).detach());
    let before = env.task_status(&id);
    let old_pid = env.containerd().pid();
    env.restart_containerd();
    assert_ne!(env.containerd().pid(), old_pid, "containerd was not restarted");

    // containerd reconnects to the shim: the task is listed again, RUNNING, same pid.
    env.wait_for_status(&id, "RUNNING", Duration::from_secs(30));
    let after = env.task_status(&id);
    assert_eq!(after, before, "ctr task ls after the restart");

    let events = env.watch_events();
    let out = env.exec(&id, "after-restart").args(["sh", "-c", "echo hello; exit 4"]).run();
    assert_eq!(
        out.code,
        Some(4),
        "exec after the restart: {}\nlog:\n{}",
        out.describe(),
        env.log_tail()
    );
    assert_eq!(out.stdout, "hello\n", "{}", out.describe());
    let ps = env.ctr(&["tasks", "ps", &id]);
    env.assert_success(&ps);
    assert_eq!(
        ps.stdout.lines().skip(1).filter(|l| !l.trim().is_empty()).count(),
        1,
        "{}",
        ps.stdout
    );

    env.assert_success(&env.ctr(&["tasks", "kill", "--signal", "SIGKILL", &id]));
    let exit = events
        .wait_for(EVENT_WAIT, |e| e.topic == "/tasks/exit" && e.str("id") == Some(id.as_str()));
    env.wait_for_status(&id, "STOPPED", Duration::from_secs(30));
    // Give a late exec-added a chance to show up, to tell "lost" from "out of order".
    events.wait_for(Duration::from_secs(10), |e| {
        e.topic == "/tasks/exec-added" && e.str("exec_id") == Some("after-restart")
    });
    let exec_events: Vec<String> = events
        .events_of(&id)
        .iter()
        .filter(|e| {
            e.str("exec_id") == Some("after-restart") || e.str("id") == Some("after-restart")
        })
        .map(|e| e.topic.clone())
        .collect();
    let all = events.dump();
    events.stop();
    assert_eq!(
        exec_events,
        ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"],
        "events of the exec after the restart:\n{all}\nlog:\n{}",
        env.log_tail()
    );
    let exit = exit.unwrap_or_else(|| {
        panic!("no exit event after the restart:\n{all}\nlog:\n{}", env.log_tail())
    });
    assert_eq!(exit.num("exit_status"), 137, "{}", exit.line);
    let deleted = env.remove_container(&id);
    assert!(deleted.stderr.contains("exit code 137"), "{}", deleted.describe());
    env.finish();
}

fn killed_sandbox_is_cleaned_up(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("crash", rt), rt) else { return };
    let id = env.start_detached(env.run("victim").args(["sleep", "600"]).detach());
    let events = env.watch_events();
    let victim = match rt {
        Runtime::Bazaar => {
            let needle = format!("-name bazaar-{id}");
            let vms: Vec<_> = leaks::processes()
                .into_iter()
                .filter(|p| p.cmdline.contains("qemu-system") && p.cmdline.contains(&needle))
                .collect();
            assert_eq!(vms.len(), 1, "expected one VM for {id}: {vms:?}");
            vms[0].pid
        }
        Runtime::Runc => env.task_status(&id).expect("task listed").0 as i32,
    };
    assert!(signal_pid(victim, libc::SIGKILL), "cannot SIGKILL {victim}");

    let exit = events
        .wait_for(EVENT_WAIT, |e| e.topic == "/tasks/exit" && e.str("id") == Some(id.as_str()));
    let start = Instant::now();
    let mut status = env.task_status(&id);
    while status.as_ref().is_some_and(|s| s.1 == "RUNNING") && start.elapsed() < EVENT_WAIT {
        std::thread::sleep(Duration::from_millis(200));
        status = env.task_status(&id);
    }
    let all = events.dump();
    events.stop();
    let context = format!("events:\n{all}\nlog:\n{}", env.log_tail());
    let exit = exit.unwrap_or_else(|| panic!("no exit event after the crash: {context}"));
    let code = exit.num("exit_status");
    match rt {
        Runtime::Runc => assert_eq!(code, 137, "{}", exit.line),
        // Killed from outside: runc's 137 for a killed process, or containerd's 255 (unknown).
        Runtime::Bazaar => {
            assert!(code == 137 || code == 255, "unclear exit status: {} ({context})", exit.line)
        }
    }
    assert_eq!(
        status.as_ref().map(|s| s.1.as_str()),
        Some("STOPPED"),
        "ctr task ls after the crash: {context}"
    );
    let deleted = env.ctr(&["tasks", "delete", &id]);
    env.assert_success(&deleted);
    assert!(deleted.stderr.contains(&format!("exit code {code}")), "{}", deleted.describe());
    env.assert_success(&env.ctr(&["containers", "delete", &id]));
    if rt == Runtime::Bazaar {
        let run_dir = std::path::Path::new(leaks::BAZAAR_RUN_DIR).join(&id);
        assert!(!run_dir.exists(), "delete left the sandbox dir {}", run_dir.display());
    }
    env.finish();
}
