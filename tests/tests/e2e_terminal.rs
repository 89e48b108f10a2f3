//! Terminals and stdin: `ctr run -t` gives the container's process a real terminal whose window
//! size follows ctr's (ResizePty, at start and on SIGWINCH); CloseIO closes a process's stdin so
//! that a process reading it sees EOF.
//!
//! ctr needs a terminal of its own for `-t`: it runs under util-linux `script` (see
//! [`bazaar_tests::pty`]). ctr calls CloseIO when its own stdin reaches EOF (its `stdinCloser`),
//! but only once the task exists: the harness keeps ctr's stdin open until the task runs, then
//! closes it.

use std::time::{Duration, Instant};

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::process::Background;
use bazaar_tests::pty;

use bazaar_tests::both_runtimes;

both_runtimes!(run_with_terminal_and_resize, close_io_gives_eof);

fn name(scenario: &str, rt: Runtime) -> String {
    format!("e2e_terminal-{scenario}-{rt:?}").to_lowercase()
}

/// Inside the container: report the terminal, then every window size seen, until the size is
/// 77x22 (the resize the test makes) or 60 s pass. `/host/ready` (a bind mount) tells the test
/// that the first size (ctr's own at start) has arrived.
const RESIZE_PROBE: &str = r#"echo "tty=$(busybox tty)"
if test -t 0 && test -t 1 && test -t 2; then echo stdio=tty; else echo stdio=notty; fi
last=; i=0
while [ $i -lt 600 ]; do
  s=$(busybox stty size 2>/dev/null)
  if [ -n "$s" ] && [ "$s" != "$last" ]; then echo "size=$s"; last=$s; [ "$s" != "0 0" ] && touch /host/ready; fi
  [ "$s" = "22 77" ] && exit 0
  i=$((i+1)); sleep 0.1
done
exit 1"#;

/// `ctr run -t`: the process's stdio is a terminal (a pty of the container's /dev/pts, as
/// under runc), its size is ctr's at start (45x123) and follows ctr's terminal when that is
/// resized (ctr gets SIGWINCH and calls ResizePty); the exit status passes through.
fn run_with_terminal_and_resize(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("tty", rt), rt) else { return };
    let share = env.containerd().dir().join("share-tty");
    std::fs::create_dir_all(&share).unwrap();
    let run = env
        .run("tty")
        .flag("--tty")
        .flag("--mount")
        .flag(&format!("type=bind,src={},dst=/host,options=rbind:rw", share.display()))
        .args(["sh", "-c", RESIZE_PROBE]);
    let ready = share.join("ready");
    let wait_secs = rt.default_timeout().as_secs();
    // ctr in the background of a non-interactive shell would get /dev/null as stdin: give it
    // the terminal explicitly. Once the container saw its first size, resize the terminal
    // (the kernel sends SIGWINCH to the foreground group, ctr included; send it again to be
    // sure), then wait for ctr's exit status.
    let shell = format!(
        "stty cols 123 rows 45; {ctr} </dev/tty & pid=$!; i=0; \
         while [ ! -e {ready} ] && [ $i -lt {tries} ]; do sleep 0.1; i=$((i+1)); done; \
         sleep 0.5; stty cols 77 rows 22; kill -WINCH $pid; wait $pid",
        ctr = pty::command_line(&run.command()),
        ready = pty::sh_quote(&ready.to_string_lossy()),
        tries = wait_secs * 10,
    );
    let out = pty::run_in_pty(&shell, rt.default_timeout() + Duration::from_secs(60)).unwrap();
    let text = pty::normalize(&out.stdout);
    let context = format!("{}\nlog:\n{}", out.describe(), env.log_tail());
    let mut failures = Vec::new();
    let tty = text.lines().find(|l| l.starts_with("tty=")).unwrap_or("(no tty= line)");
    if !tty.starts_with("tty=/dev/pts/") {
        failures.push(format!(
            "ttyname of stdin must be a /dev/pts entry of the container, got {tty:?}"
        ));
    }
    if !text.contains("stdio=tty\n") {
        failures.push("stdin/stdout/stderr are not all the terminal".to_string());
    }
    let sizes: Vec<&str> = text.lines().filter(|l| l.starts_with("size=")).collect();
    if !sizes.contains(&"size=45 123") {
        failures.push(format!(
            "the size at start is not ctr's 45x123 (ResizePty): sizes seen {sizes:?}"
        ));
    }
    if sizes.last() != Some(&"size=22 77") {
        failures
            .push(format!("the resize to 22x77 did not reach the process: sizes seen {sizes:?}"));
    }
    if out.code != Some(0) {
        failures.push(format!("exit status {:?}, expected Some(0)", out.code));
    }
    assert!(failures.is_empty(), "{}\n{context}", failures.join("\n"));
    env.finish();
}

/// Polls until the task of `id` is RUNNING (at most `timeout`); false if it never was.
fn wait_running(env: &TestEnv, id: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if env.task_status(id).is_some_and(|(_, s)| s == "RUNNING") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A process reading stdin gets what ctr is given, then EOF when ctr's stdin ends (ctr calls
/// CloseIO): for the init process (`ctr run`) and for an exec (`ctr task exec`).
fn close_io_gives_eof(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("closeio", rt), rt) else { return };
    let script = "cat; echo after-eof";
    let timeout = rt.default_timeout();

    // The init process.
    let run = env.run("init").args(["sh", "-c", script]);
    let id = run.id().to_string();
    let mut ctr = Background::spawn(run.command(), true).unwrap();
    ctr.write_stdin(b"to init\n").unwrap();
    let running = wait_running(&env, &id, timeout);
    std::thread::sleep(Duration::from_millis(500));
    ctr.close_stdin();
    let out = ctr.wait(Duration::from_secs(30));
    let context = format!("{}\nlog:\n{}", out.describe(), env.log_tail());
    assert!(running, "the task never ran: {context}");
    assert!(!out.timed_out, "init never saw EOF on stdin after CloseIO: {context}");
    assert_eq!(out.stdout, "to init\nafter-eof\n", "{context}");
    assert_eq!(out.code, Some(0), "{context}");

    // An exec, in a long-running container.
    let id = env.start_detached(env.run("sleeper").args(["sleep", "600"]).detach());
    let events = env.watch_events();
    let exec = env.exec(&id, "reader").args(["sh", "-c", script]);
    let mut ctr = Background::spawn(exec.command(), true).unwrap();
    ctr.write_stdin(b"to exec\n").unwrap();
    let started = events.wait_for(timeout, |e| {
        e.topic == "/tasks/exec-started" && e.str("exec_id") == Some("reader")
    });
    std::thread::sleep(Duration::from_millis(500));
    ctr.close_stdin();
    let out = ctr.wait(Duration::from_secs(30));
    let context =
        format!("{}\nevents:\n{}\nlog:\n{}", out.describe(), events.dump(), env.log_tail());
    assert!(started.is_some(), "the exec never started: {context}");
    assert!(!out.timed_out, "the exec never saw EOF on stdin after CloseIO: {context}");
    assert_eq!(out.stdout, "to exec\nafter-eof\n", "{context}");
    assert_eq!(out.code, Some(0), "{context}");
    events.stop();
    env.remove_container(&id);
    env.finish();
}
