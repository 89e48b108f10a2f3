//! `ctr run` through a private containerd: output, kernel, exit status, stdin, rootfs, a missing
//! binary, two containers at once. Each scenario runs with Bazaar (a real VM) and with runc (the
//! reference, and a check of the harness itself); every test ends with the leak check.

use std::time::Duration;

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::{image, kernel, paths};

/// A missing binary must be reported within this (the VM boots first under Bazaar).
const FAST_FAIL: Duration = Duration::from_secs(15);

use bazaar_tests::both_runtimes;

both_runtimes!(
    echo_output,
    kernel_release,
    exit_status,
    stdin_reaches_process,
    image_is_the_rootfs,
    missing_binary_fails_fast,
    two_containers_at_once,
);

fn name(scenario: &str, rt: Runtime) -> String {
    format!("e2e_run-{scenario}-{rt:?}").to_lowercase()
}

fn echo_output(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("echo", rt), rt) else { return };
    let out = env.run("echo").args(["echo", "hello", "from", "a container"]).run();
    env.assert_success(&out);
    assert_eq!(out.stdout, "hello from a container\n", "{}", out.describe());
    env.finish();
}

/// Under Bazaar the process sees the guest kernel (the one built in this tree), not the host's.
fn kernel_release(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("kernel", rt), rt) else { return };
    let host = kernel::host_release().unwrap();
    let out = env.run("uname").args(["uname", "-r"]).run();
    env.assert_success(&out);
    let inside = out.stdout.trim();
    match rt {
        Runtime::Runc => assert_eq!(inside, host, "runc shares the host kernel"),
        Runtime::Bazaar => {
            assert_ne!(inside, host, "the container saw the host kernel: not in a VM?");
            match kernel::bzimage_release(&paths::guest_kernel()) {
                Ok(guest) => assert_eq!(inside, guest, "release of the guest kernel"),
                Err(err) => eprintln!("note: cannot read the guest kernel's release: {err:#}"),
            }
        }
    }
    let out = env.run("uname-a").args(["uname", "-a"]).run();
    env.assert_success(&out);
    assert!(out.stdout.contains(inside), "uname -a: {}", out.describe());
    env.finish();
}

fn exit_status(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("exit", rt), rt) else { return };
    let out = env.run("exit7").args(["sh", "-c", "exit 7"]).run();
    assert!(!out.timed_out, "{}", out.describe());
    assert_eq!(out.code, Some(7), "ctr must exit with the task's status: {}", out.describe());
    let out = env.run("false").args(["false"]).run();
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let out = env.run("true").args(["true"]).run();
    env.assert_success(&out);
    env.finish();
}

/// ctr copies its stdin to the task's. It does not pass on the end of it (ctr 1.6 never closes
/// the task's stdin, with runc either), so each command stops after reading what it expects.
fn stdin_reaches_process(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("stdin", rt), rt) else { return };
    let out = env.run("read").args(["sh", "-c", "read a; read b; echo \"$b|$a\""]);
    let out = out.stdin(b"line one\nline two\n").run();
    env.assert_success(&out);
    assert_eq!(out.stdout, "line two|line one\n", "{}", out.describe());

    // More than a pipe buffer gets through intact.
    let data: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let script = "head -c 300000 | md5sum";
    let out = env.run("bulk").args(["sh", "-c", script]).stdin(&data).run();
    env.assert_success(&out);
    let expect = md5_hex(&data);
    assert_eq!(out.stdout.split_whitespace().next(), Some(expect.as_str()), "{}", out.describe());
    env.finish();
}

/// md5 of `data` as `md5sum` prints it, computed by the host's md5sum.
fn md5_hex(data: &[u8]) -> String {
    let out = bazaar_tests::process::run(
        std::process::Command::new("md5sum"),
        Some(data),
        Duration::from_secs(30),
    )
    .unwrap();
    out.stdout.split_whitespace().next().unwrap().to_string()
}

/// The container sees the image's files, and not the host's.
fn image_is_the_rootfs(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("rootfs", rt), rt) else { return };
    let out = env.run("marker").args(["cat", image::MARKER_PATH]).run();
    env.assert_success(&out);
    assert_eq!(out.stdout, image::MARKER_CONTENTS, "{}", out.describe());

    assert!(std::path::Path::new("/etc/debian_version").exists());
    let script = "test ! -e /etc/debian_version && readlink /bin/sh && ls /";
    let out = env.run("no-host").args(["sh", "-c", script]).run();
    env.assert_success(&out);
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("busybox"), "{}", out.describe());
    let root: Vec<&str> = out.stdout.lines().skip(1).flat_map(str::split_whitespace).collect();
    for dir in ["bin", "etc", "tmp"] {
        assert!(root.contains(&dir), "/{dir} missing from the rootfs: {}", out.describe());
    }
    // Writes stay in the container: a second container starts from the image again.
    let out =
        env.run("write").args(["sh", "-c", "echo x > /etc/written && cat /etc/written"]).run();
    env.assert_success(&out);
    let out = env.run("fresh").args(["sh", "-c", "test ! -e /etc/written"]).run();
    env.assert_success(&out);
    env.finish();
}

fn missing_binary_fails_fast(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("nosuchcmd", rt), rt) else { return };
    let out = env.run("nosuchcmd").args(["nosuchcmd-bazaar"]).timeout(FAST_FAIL * 2).run();
    assert!(!out.success(), "a missing binary must fail: {}", out.describe());
    assert!(!out.timed_out, "hung instead of failing: {}", out.describe());
    assert!(out.elapsed < FAST_FAIL, "took {:?} (limit {FAST_FAIL:?})", out.elapsed);
    assert!(
        out.stderr.contains("nosuchcmd-bazaar"),
        "the error must name the missing binary: {}",
        out.describe()
    );
    env.finish();
}

/// Two containers (two sandboxes under Bazaar) running at the same time, each with its output.
/// containerd's task list must show both RUNNING at one moment.
fn two_containers_at_once(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("two", rt), rt) else { return };
    let a = env.run("a").args(["sh", "-c", "sleep 5; echo done-a"]);
    let b = env.run("b").args(["sh", "-c", "sleep 5; echo done-b"]);
    let (out_a, out_b, seen_together) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.run());
        let tb = s.spawn(|| b.run());
        let mut seen = false;
        while !(ta.is_finished() && tb.is_finished()) {
            if !seen {
                let tasks = env.ctr(&["tasks", "list"]).stdout;
                let running =
                    |id: &str| tasks.lines().any(|l| l.starts_with(id) && l.contains("RUNNING"));
                seen = running(a.id()) && running(b.id());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (ta.join().unwrap(), tb.join().unwrap(), seen)
    });
    env.assert_success(&out_a);
    env.assert_success(&out_b);
    assert_eq!(out_a.stdout, "done-a\n", "{}", out_a.describe());
    assert_eq!(out_b.stdout, "done-b\n", "{}", out_b.describe());
    assert!(seen_together, "the two containers never ran at the same time");
    env.finish();
}
