//! `ctr task exec`: extra processes in a running container, with and without a terminal, their
//! output and exit status, the ExecAdded / ExecStarted / exit events, several at once.
//!
//! Each scenario runs with Bazaar and with runc (the reference) in a private containerd; one
//! long-running container (`sleep 600`) serves every check of a scenario, and the leak check
//! ends each test.

use std::time::Duration;

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::process::Background;
use bazaar_tests::pty;

use bazaar_tests::both_runtimes;

both_runtimes!(
    exec_status_output_and_events,
    exec_with_and_without_terminal,
    several_execs_at_once
);

const EVENT_WAIT: Duration = Duration::from_secs(30);

fn name(scenario: &str, rt: Runtime) -> String {
    format!("e2e_exec-{scenario}-{rt:?}").to_lowercase()
}

fn start_sleeper(env: &TestEnv) -> String {
    env.start_detached(env.run("sleeper").args(["sleep", "600"]).detach())
}

/// An exec's stdout, stderr and exit status reach ctr; containerd hears exec-added,
/// exec-started (with the pid) and the exit (with the status) in that order.
fn exec_status_output_and_events(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("status", rt), rt) else { return };
    let id = start_sleeper(&env);
    let events = env.watch_events();

    let out = env.exec(&id, "e1").args(["sh", "-c", "echo out; echo err >&2; exit 3"]).run();
    assert!(!out.timed_out, "{}", out.describe());
    assert_eq!(
        out.code,
        Some(3),
        "exec's exit status: {}\nlog:\n{}",
        out.describe(),
        env.log_tail()
    );
    assert_eq!(out.stdout, "out\n", "{}", out.describe());
    assert_eq!(out.stderr, "err\n", "{}", out.describe());

    let out = env.exec(&id, "e2").args(["true"]).run();
    env.assert_success(&out);
    let out = env.exec(&id, "e3").args(["pwd"]).cwd("/tmp").run();
    env.assert_success(&out);
    assert_eq!(out.stdout, "/tmp\n", "--cwd: {}", out.describe());

    // The exec's exit event, then the whole sequence for e1.
    let exit =
        events.wait_for(EVENT_WAIT, |e| e.topic == "/tasks/exit" && e.str("id") == Some("e1"));
    let seq: Vec<_> = events
        .events_of(&id)
        .into_iter()
        .filter(|e| e.str("exec_id") == Some("e1") || e.str("id") == Some("e1"))
        .collect();
    let topics: Vec<&str> = seq.iter().map(|e| e.topic.as_str()).collect();
    let all = events.dump();
    assert_eq!(
        topics,
        ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"],
        "events of exec e1 (all events:\n{all})"
    );
    let started = &seq[1];
    let exit = exit.expect("exit event of e1");
    assert!(started.num("pid") > 0, "exec-started carries the pid: {}", started.line);
    assert_eq!(exit.num("pid"), started.num("pid"), "exit and start name the same pid:\n{all}");
    assert_eq!(exit.num("exit_status"), 3, "exit event's status: {}", exit.line);
    for exec_id in ["e2", "e3"] {
        let ok = events
            .wait_for(EVENT_WAIT, |e| e.topic == "/tasks/exit" && e.str("id") == Some(exec_id));
        let ok = ok.unwrap_or_else(|| panic!("no exit event for {exec_id}:\n{all}"));
        assert_eq!(ok.num("exit_status"), 0, "{}", ok.line);
    }

    // A binary that does not exist: ctr fails, naming it; the container runs on.
    let out = env.exec(&id, "e4").args(["nosuchcmd-bazaar"]).run();
    assert!(!out.success() && !out.timed_out, "exec of a missing binary: {}", out.describe());
    assert!(
        out.stderr.contains("nosuchcmd-bazaar"),
        "the error must name the binary: {}",
        out.describe()
    );
    assert_eq!(env.task_status(&id).map(|s| s.1).as_deref(), Some("RUNNING"));

    events.stop();
    env.remove_container(&id);
    env.finish();
}

/// What the process sees of its stdio (busybox's `tty` is not linked in the image: call it
/// through busybox). It waits until ctr has passed on the window size (ctr resizes right after
/// Start) before printing it.
const TTY_PROBE: &str = r#"i=0; while s=$(busybox stty size 2>/dev/null); { [ -z "$s" ] || [ "$s" = "0 0" ]; } && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "tty=$(busybox tty)"; echo "size=$(busybox stty size 2>&1)"
if test -t 0 && test -t 1 && test -t 2; then echo stdio=tty; else echo stdio=notty; fi
exit 5"#;

/// What [`TTY_PROBE`] must print in a terminal of 123x45 (ctr's output under `script`, with
/// `\r\n` made `\n`), as under runc: the terminal is a pty of the container's own /dev/pts.
pub fn check_tty_probe(text: &str, code: Option<i32>) -> Vec<String> {
    let mut failures = Vec::new();
    if text.contains('\0') {
        failures.push(format!("stray NUL byte(s) in the terminal output: {text:?}"));
    }
    let text = text.replace('\0', "");
    let lines: Vec<&str> = text.lines().collect();
    match lines.as_slice() {
        [tty, size, stdio] => {
            if !tty.starts_with("tty=/dev/pts/") {
                failures.push(format!(
                    "ttyname of stdin must be a /dev/pts entry of the container, got {tty:?}"
                ));
            }
            if *size != "size=45 123" {
                failures.push(format!("window size not passed on (ResizePty): {size:?}"));
            }
            if *stdio != "stdio=tty" {
                failures.push(format!("stdin/stdout/stderr are not all the terminal: {stdio:?}"));
            }
        }
        _ => failures.push(format!("unexpected terminal output {text:?}")),
    }
    if code != Some(5) {
        failures.push(format!("exit status through a terminal: {code:?}, expected Some(5)"));
    }
    failures
}

/// `ctr task exec -t` gives the process a terminal (stdin, stdout and stderr), of the size of
/// ctr's own (ResizePty of an exec); without `-t` there is none. Exit status passes through.
fn exec_with_and_without_terminal(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("tty", rt), rt) else { return };
    let id = start_sleeper(&env);

    let exec = env.exec(&id, "t1").tty().args(["sh", "-c", TTY_PROBE]);
    let shell = format!("stty cols 123 rows 45; {}", pty::command_line(&exec.command()));
    let out = pty::run_in_pty(&shell, rt.default_timeout()).unwrap();
    let text = pty::normalize(&out.stdout);
    let mut failures = check_tty_probe(&text, out.code);
    let tty_context = out.describe();

    let out = env.exec(&id, "t2").args(["sh", "-c", TTY_PROBE]).run();
    if out.code != Some(5) || out.stdout != "tty=not a tty\nsize=stty: standard input: Inappropriate ioctl for device\nstdio=notty\n" {
        failures.push(format!("without -t: unexpected {}", out.describe()));
    }
    assert!(
        failures.is_empty(),
        "{}\nwith -t: {tty_context}\nlog:\n{}",
        failures.join("\n"),
        env.log_tail()
    );
    env.remove_container(&id);
    env.finish();
}

/// Four execs run at the same time: each waits (in the container) until all four have started,
/// so they can only finish if they really run concurrently; each gets its own output and status.
fn several_execs_at_once(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("several", rt), rt) else { return };
    let id = start_sleeper(&env);
    const N: usize = 4;
    let script = |i: usize| {
        format!(
            "touch /tmp/started.{i}; n=0; \
             while [ $(ls /tmp/started.* | wc -l) -lt {N} ]; do \
               n=$((n+1)); [ $n -gt 600 ] && {{ echo gave-up-{i}; exit 99; }}; sleep 0.1; done; \
             echo done-{i}; echo err-{i} >&2; exit {}",
            10 + i
        )
    };
    let mut running = Vec::new();
    for i in 0..N {
        let exec =
            env.exec(&id, &format!("par{i}")).args(["sh".to_string(), "-c".into(), script(i)]);
        running.push(Background::spawn(exec.command(), false).expect("spawn ctr task exec"));
    }
    for (i, bg) in running.into_iter().enumerate() {
        let out = bg.wait(rt.default_timeout());
        let context = format!("exec {i}: {}\nlog:\n{}", out.describe(), env.log_tail());
        assert!(!out.timed_out, "{context}");
        assert_eq!(out.stdout, format!("done-{i}\n"), "{context}");
        assert_eq!(out.stderr, format!("err-{i}\n"), "{context}");
        assert_eq!(out.code, Some(10 + i as i32), "{context}");
    }
    env.remove_container(&id);
    env.finish();
}
