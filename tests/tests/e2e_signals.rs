//! Signals through `ctr task kill`: any signal, by name or number, to the init process or to an
//! exec, `--all`; a process ended by signal N is reported with exit status 128+N, as runc's shim
//! reports it (ctr exits with it; the exit event and `ctr task delete` carry it).
//!
//! The container's init is PID 1 of its PID namespace under runc: a signal it has no handler
//! for (other than SIGKILL/SIGSTOP) is not delivered to it. These tests rely on that and check
//! Bazaar does the same.

use std::time::{Duration, Instant};

use bazaar_tests::events::EventWatcher;
use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::process::Background;

use bazaar_tests::both_runtimes;

both_runtimes!(signals_to_execs, signals_to_init, kill_all);

const EVENT_WAIT: Duration = Duration::from_secs(30);

fn name(scenario: &str, rt: Runtime) -> String {
    format!("e2e_signals-{scenario}-{rt:?}").to_lowercase()
}

/// Waits for the exit event of `exec_id` (the init process when it is the container id).
fn exit_status(events: &EventWatcher, id: &str, process: &str) -> Option<u64> {
    events
        .wait_for(EVENT_WAIT, |e| {
            e.topic == "/tasks/exit" && e.container_id() == Some(id) && e.str("id") == Some(process)
        })
        .map(|e| e.num("exit_status"))
}

/// Starts `sleep 600` as exec `exec_id` with ctr in the background and waits until it runs.
fn start_exec(
    env: &TestEnv,
    events: &EventWatcher,
    id: &str,
    exec_id: &str,
    args: &[&str],
) -> Background {
    let exec = env.exec(id, exec_id).args(args.iter().copied());
    let bg = Background::spawn(exec.command(), false).expect("spawn ctr task exec");
    let started = events.wait_for(env.runtime().default_timeout(), |e| {
        e.topic == "/tasks/exec-started" && e.str("exec_id") == Some(exec_id)
    });
    assert!(
        started.is_some(),
        "exec {exec_id} never started; events:\n{}\nlog:\n{}",
        events.dump(),
        env.log_tail()
    );
    bg
}

/// Execs killed by SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 given as `10`, SIGKILL: each
/// exits with 128+N, reported to its ctr and in its exit event; the init process runs on.
fn signals_to_execs(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("execs", rt), rt) else { return };
    let id = env.start_detached(env.run("sleeper").args(["sleep", "600"]).detach());
    let events = env.watch_events();
    let cases: &[(&str, &str, i32)] = &[
        ("term", "SIGTERM", 15),
        ("int", "SIGINT", 2),
        ("hup", "SIGHUP", 1),
        ("quit", "SIGQUIT", 3),
        ("usr1", "10", 10),
        ("kill", "SIGKILL", 9),
    ];
    let running: Vec<Background> = cases
        .iter()
        .map(|(exec_id, _, _)| start_exec(&env, &events, &id, exec_id, &["sleep", "600"]))
        .collect();
    let mut failures = Vec::new();
    for ((exec_id, signal, n), bg) in cases.iter().zip(running) {
        let kill = env.ctr(&["tasks", "kill", "--signal", signal, "--exec-id", exec_id, &id]);
        env.assert_success(&kill);
        let out = bg.wait(Duration::from_secs(30));
        let expect = 128 + n;
        if out.code != Some(expect) {
            failures.push(format!(
                "exec {exec_id} killed with {signal}: ctr exited {:?}, expected {expect}: {}",
                out.code,
                out.describe()
            ));
        }
        let status = exit_status(&events, &id, exec_id);
        if status != Some(expect as u64) {
            failures.push(format!("exec {exec_id} killed with {signal}: exit event status {status:?}, expected {expect}"));
        }
    }
    let init = env.task_status(&id);
    if init.as_ref().map(|s| s.1.as_str()) != Some("RUNNING") {
        failures.push(format!("the init process must run on, it is {init:?}"));
    }
    assert!(
        failures.is_empty(),
        "{}\nevents:\n{}\nlog:\n{}",
        failures.join("\n"),
        events.dump(),
        env.log_tail()
    );
    events.stop();
    env.remove_container(&id);
    env.finish();
}

/// The init process gets every signal it has a handler for, whether named or numbered; one it
/// has no handler for is not delivered (PID 1); SIGKILL ends it with 137, as the exit event,
/// `ctr task ls` and `ctr task delete` say.
fn signals_to_init(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("init", rt), rt) else { return };
    let events = env.watch_events();

    // A shell with handlers that log the signals they get, and exit 42 on SIGUSR2.
    let script = r#"for s in HUP INT TERM USR1 WINCH; do trap "echo $s >> /tmp/got" $s; done
trap 'echo USR2 >> /tmp/got; exit 42' USR2
echo ready > /tmp/got
while :; do sleep 0.1; done"#;
    let trapper = env.start_detached(env.run("trapper").args(["sh", "-c", script]).detach());
    let got = |env: &TestEnv| {
        env.exec(&trapper, &format!("cat{}", rand_suffix())).args(["cat", "/tmp/got"]).run()
    };
    let signals = [
        ("", ""),
        ("SIGHUP", "HUP"),
        ("2", "INT"),
        ("SIGTERM", "TERM"),
        ("10", "USR1"),
        ("SIGWINCH", "WINCH"),
    ];
    let mut expect = String::from("ready\n");
    for (signal, logged) in signals {
        // First (no signal) wait until the handlers are installed: RUNNING comes before that.
        if !signal.is_empty() {
            env.assert_success(&env.ctr(&["tasks", "kill", "--signal", signal, &trapper]));
            expect.push_str(logged);
            expect.push('\n');
        }
        // The handler runs once the shell's `sleep 0.1` ends.
        let start = Instant::now();
        loop {
            let out = got(&env);
            env.assert_success(&out);
            if out.stdout == expect {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "after `kill --signal {signal}` the init process logged {:?}, expected {expect:?}\nlog:\n{}",
                out.stdout,
                env.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    env.assert_success(&env.ctr(&["tasks", "kill", "--signal", "SIGUSR2", &trapper]));
    let status = exit_status(&events, &trapper, &trapper);
    assert_eq!(
        status,
        Some(42),
        "exit of the init process after its USR2 handler; events:\n{}",
        events.dump()
    );
    env.wait_for_status(&trapper, "STOPPED", Duration::from_secs(30));
    let deleted = env.remove_container(&trapper);
    assert!(
        deleted.stderr.contains("exit code 42"),
        "ctr task delete reports the status: {}",
        deleted.describe()
    );

    // `sleep` as PID 1 has no handlers: SIGTERM is not delivered, SIGKILL is.
    let sleeper = env.start_detached(env.run("sleeper").args(["sleep", "600"]).detach());
    env.assert_success(&env.ctr(&["tasks", "kill", &sleeper])); // ctr's default: SIGTERM
    std::thread::sleep(Duration::from_secs(2));
    let now = env.task_status(&sleeper);
    assert_eq!(
        now.as_ref().map(|s| s.1.as_str()),
        Some("RUNNING"),
        "SIGTERM must not end a PID 1 without a handler (as under runc); events:\n{}",
        events.dump()
    );
    env.assert_success(&env.ctr(&["tasks", "kill", "--signal", "SIGKILL", &sleeper]));
    let status = exit_status(&events, &sleeper, &sleeper);
    assert_eq!(status, Some(137), "exit of an init killed by SIGKILL; events:\n{}", events.dump());
    env.wait_for_status(&sleeper, "STOPPED", Duration::from_secs(30));
    let deleted = env.remove_container(&sleeper);
    assert!(
        deleted.stderr.contains("exit code 137"),
        "ctr task delete reports the status: {}",
        deleted.describe()
    );

    // A foreground `ctr run` exits with its task's 128+N.
    let run = env.run("fg").args(["sleep", "600"]);
    let fg = run.id().to_string();
    let ctr = Background::spawn(run.command(), false).unwrap();
    env.wait_for_status(&fg, "RUNNING", env.runtime().default_timeout());
    env.assert_success(&env.ctr(&["tasks", "kill", "--signal", "9", &fg]));
    let out = ctr.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(137), "ctr run of a task killed by signal 9: {}", out.describe());
    events.stop();
    env.finish();
}

/// Unique exec ids for repeated execs.
fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// `kill --all` signals every process of the container: execs and processes nobody execs
/// (a daemon an exec left behind) die of SIGTERM, the init (`sleep`, PID 1, no handler) does
/// not; `kill --all --signal SIGKILL` then ends the init too (137).
fn kill_all(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("all", rt), rt) else { return };
    let id = env.start_detached(env.run("sleeper").args(["sleep", "600"]).detach());
    let events = env.watch_events();
    let exec = start_exec(&env, &events, &id, "e1", &["sleep", "600"]);
    // A daemon: the exec returns at once and leaves its child running in the container.
    let out =
        env.exec(&id, "daemon").args(["sh", "-c", "sleep 601 >/dev/null 2>&1 </dev/null &"]).run();
    env.assert_success(&out);
    let pids = |env: &TestEnv| {
        let out = env.ctr(&["tasks", "ps", &id]);
        env.assert_success(&out);
        out.stdout.lines().skip(1).filter(|l| !l.trim().is_empty()).count()
    };
    assert_eq!(pids(&env), 3, "init, exec and daemon: {}", env.ctr(&["tasks", "ps", &id]).stdout);

    env.assert_success(&env.ctr(&["tasks", "kill", "--all", "--signal", "SIGTERM", &id]));
    let out = exec.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(143), "the exec dies of SIGTERM: {}", out.describe());
    assert_eq!(exit_status(&events, &id, "e1"), Some(143), "events:\n{}", events.dump());
    let start = Instant::now();
    while pids(&env) != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "after kill --all SIGTERM only the init must be left: {}",
            env.ctr(&["tasks", "ps", &id]).stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        env.task_status(&id).map(|s| s.1).as_deref(),
        Some("RUNNING"),
        "PID 1 ignores SIGTERM"
    );

    env.assert_success(&env.ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", &id]));
    assert_eq!(exit_status(&events, &id, &id), Some(137), "events:\n{}", events.dump());
    env.wait_for_status(&id, "STOPPED", Duration::from_secs(30));
    events.stop();
    env.remove_container(&id);
    env.finish();
}
