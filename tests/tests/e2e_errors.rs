//! Errors of the Task API carry the status codes containerd expects, with a message naming the
//! cause. ctr prints a failed call as `ctr: <message>: <status>`, the status as containerd's
//! errdefs spells the gRPC code (`not found`, `already exists`, `failed precondition`, ...), so
//! the tests read the code from the end of ctr's stderr. The expectations are runc's answers
//! (the runc variant checks them); where runc answers `unknown` only a failure with a telling
//! message is required.
//!
//! ctr cannot reach the shim with an unknown *container* id: containerd answers that itself
//! from its metadata (`container "x" in namespace "default": not found`) before any runtime is
//! involved. The nearest runtime-level case is an unknown exec id of a known container.

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::process::{Background, Output};

use bazaar_tests::both_runtimes;

both_runtimes!(status_codes);

fn name(scenario: &str, rt: Runtime) -> String {
    format!("e2e_errors-{scenario}-{rt:?}").to_lowercase()
}

/// What a failed ctr call must show.
struct Expect {
    /// The status text at the end of stderr; `None`: any status.
    status: Option<&'static str>,
    /// Each group: at least one of these words in the message (case-insensitive).
    words: Vec<Vec<String>>,
}

fn check(failures: &mut Vec<String>, what: &str, out: &Output, expect: Expect) {
    if out.success() || out.timed_out {
        failures.push(format!("{what}: must fail: {}", out.describe()));
        return;
    }
    let stderr = out.stderr.trim_end();
    if let Some(status) = expect.status {
        if !stderr.ends_with(&format!(": {status}")) {
            failures.push(format!("{what}: expected the status `{status}`, ctr said {stderr:?}"));
        }
    }
    let lower = stderr.to_lowercase();
    for group in expect.words {
        if !group.iter().any(|w| lower.contains(&w.to_lowercase())) {
            failures.push(format!("{what}: the message must name one of {group:?}: {stderr:?}"));
        }
    }
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn status_codes(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("codes", rt), rt) else { return };
    let running = env.start_detached(env.run("running").args(["sleep", "600"]).detach());
    let stopped =
        env.start_detached(env.run("stopped").args(["sh", "-c", "sleep 1; exit 3"]).detach());
    env.wait_for_status(&stopped, "STOPPED", std::time::Duration::from_secs(60));
    let events = env.watch_events();
    let exec = env.exec(&running, "e1").args(["sleep", "600"]);
    let e1 = Background::spawn(exec.command(), false).unwrap();
    let started = events.wait_for(rt.default_timeout(), |e| {
        e.topic == "/tasks/exec-started" && e.str("exec_id") == Some("e1")
    });
    assert!(started.is_some(), "exec e1 never started:\n{}\n{}", events.dump(), env.log_tail());
    events.stop();
    let mut failures = Vec::new();

    let out = env.ctr(&["tasks", "kill", "--exec-id", "nosuch-exec", &running]);
    let expect = Expect { status: Some("not found"), words: vec![words(&["nosuch-exec"])] };
    check(&mut failures, "kill of an unknown exec id", &out, expect);

    let out = env.exec(&running, "e1").args(["true"]).run();
    let expect = Expect { status: Some("already exists"), words: vec![words(&["e1"])] };
    check(&mut failures, "exec with an exec id in use", &out, expect);

    // ctr's client refuses after asking the task's State: a running task is not deleted.
    let out = env.ctr(&["tasks", "delete", &running]);
    let expect = Expect { status: Some("failed precondition"), words: vec![words(&["running"])] };
    check(&mut failures, "delete of a running task", &out, expect);

    let out = env.ctr(&["tasks", "kill", &stopped]);
    let expect = Expect {
        status: Some("not found"),
        words: vec![words(&["finished", "stopped", "exited", "not running"])],
    };
    check(&mut failures, "kill of a stopped task", &out, expect);

    let out = env.exec(&stopped, "late").args(["true"]).run();
    let expect = Expect { status: None, words: vec![words(&["stopped", "not running", "exited"])] };
    check(&mut failures, "exec in a stopped task", &out, expect);

    let out = env.ctr(&["tasks", "pause", &stopped]);
    let expect = Expect { status: None, words: vec![words(&["stopped", "not running", "exited"])] };
    check(&mut failures, "pause of a stopped task", &out, expect);

    let out = env.ctr(&["tasks", "resume", &running]);
    let expect = Expect { status: None, words: vec![words(&["running", "not paused"])] };
    check(&mut failures, "resume of a task that is not paused", &out, expect);

    // Not errors, under runc: the processes of a stopped task (none), and its exit status.
    let out = env.ctr(&["tasks", "ps", &stopped]);
    let listed: Vec<&str> = out.stdout.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
    if !out.success() || !listed.is_empty() {
        failures.push(format!(
            "ps of a stopped task: expected success and no process: {}",
            out.describe()
        ));
    }
    let out = env.ctr(&["tasks", "delete", &stopped]);
    if !out.success() || !out.stderr.contains("exit code 3") {
        failures.push(format!(
            "delete of a task that exited 3 must succeed and report 3: {}",
            out.describe()
        ));
    }

    assert!(failures.is_empty(), "{}\nlog:\n{}", failures.join("\n"), env.log_tail());
    env.assert_success(&env.ctr(&["containers", "delete", &stopped]));
    env.remove_container(&running);
    let _ = e1.wait(std::time::Duration::from_secs(30));
    env.finish();
}
