//! Component tests of the agent: the real binary in host mode (Unix socket, child subreaper),
//! real namespaces and mounts, a busybox root filesystem. Root only; they SKIP otherwise.

mod common;

use std::future::Future;
use std::time::Duration;

use bazaar_protocols::agent::*;
use common::{ctx, spec, Env};
use serde_json::json;

/// Runs a test body with a deadline, so that a hung agent fails the test instead of CI.
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(90), body).await.expect("test timed out");
}

fn status_of(err: ttrpc::Error) -> ttrpc::Status {
    match err {
        ttrpc::Error::RpcStatus(status) => status,
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn echo_hello_and_exit_codes() {
    if !common::can_run("echo_hello_and_exit_codes") {
        return;
    }
    bounded(async {
        let env = Env::start("echo", &[]).await;
        let (status, stdout, stderr) = env.run(&env.id("echo"), &spec(&["echo", "hello"])).await;
        assert_eq!((status, stdout.as_str(), stderr.as_str()), (0, "hello\n", ""));

        let (status, _, _) = env.run(&env.id("exit7"), &spec(&["sh", "-c", "exit 7"])).await;
        assert_eq!(status, 7);

        let (status, stdout, stderr) =
            env.run(&env.id("both"), &spec(&["sh", "-c", "echo out; echo err >&2; exit 3"])).await;
        assert_eq!((status, stdout.as_str(), stderr.as_str()), (3, "out\n", "err\n"));
    })
    .await;
}

#[tokio::test]
async fn container_view_is_isolated() {
    if !common::can_run("container_view_is_isolated") {
        return;
    }
    bounded(async {
        let env = Env::start("view", &[]).await;
        let script = "echo pid=$$; hostname; ls /dev/null /dev/zero /dev/urandom /dev/pts/ptmx; \
                      cat /proc/kcore | wc -c; ls /sys/firmware | wc -l; \
                      echo x > /proc/sys/kernel/hostname || echo ro-ok";
        let (status, stdout, stderr) = env.run(&env.id("view"), &spec(&["sh", "-c", script])).await;
        assert_eq!(status, 0, "stderr: {stderr}");
        let expected =
            "pid=1\nbazaar-test\n/dev/null\n/dev/pts/ptmx\n/dev/urandom\n/dev/zero\n0\n0\nro-ok\n";
        assert_eq!(stdout, expected, "stderr: {stderr}");
    })
    .await;
}

#[tokio::test]
async fn stdin_roundtrip() {
    if !common::can_run("stdin_roundtrip") {
        return;
    }
    bounded(async {
        let env = Env::start("stdin", &[]).await;
        let id = env.id("cat");
        env.create(&id, &spec(&["cat"]), false, true).await.expect("CreateContainer");
        env.start_container(&id).await;
        let mut write = WriteStreamRequest::new();
        write.container_id = id.clone();
        write.data = b"ping\n".to_vec();
        // A pending ReadStdout must not hold up WriteStdin on the same connection.
        let reader = env.read_all(&id, "", false);
        let writer = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let written = env.client.write_stdin(ctx(), &write).await.expect("WriteStdin");
            assert_eq!(written.len, 5);
            let mut close = CloseStdinRequest::new();
            close.container_id = id.clone();
            env.client.close_stdin(ctx(), &close).await.expect("CloseStdin");
        };
        let (stdout, ()) = tokio::join!(reader, writer);
        assert_eq!(stdout, b"ping\n");
        assert_eq!(env.wait(&id, "").await, 0);
        // Writing after CloseStdin fails with a status, not a hang.
        let err = env.client.write_stdin(ctx(), &write).await.expect_err("write after close");
        assert_eq!(status_of(err).code(), ttrpc::Code::FAILED_PRECONDITION);
        env.remove(&id).await;
    })
    .await;
}

#[tokio::test]
async fn missing_binary_fails_at_create() {
    if !common::can_run("missing_binary_fails_at_create") {
        return;
    }
    bounded(async {
        let env = Env::start("missing", &[]).await;
        let id = env.id("missing");
        let err = env.create(&id, &spec(&["nosuchcmd"]), false, false).await.expect_err("create");
        let status = status_of(err);
        assert_eq!(status.code(), ttrpc::Code::NOT_FOUND);
        assert!(
            status.message().contains("exec: \"nosuchcmd\": executable file not found in $PATH"),
            "message: {}",
            status.message()
        );
        let err = env.create(&id, &spec(&["/etc/data"]), false, false).await.expect_err("create");
        assert_eq!(status_of(err).code(), ttrpc::Code::PERMISSION_DENIED);

        // Nothing is left: the id is free again and unknown to the other calls.
        let mut wait = WaitProcessRequest::new();
        wait.container_id = id.clone();
        let err =
            env.client.wait_process(ctx(), &wait).await.expect_err("wait on a failed container");
        assert_eq!(status_of(err).code(), ttrpc::Code::NOT_FOUND);
        let (status, _, _) = env.run(&id, &spec(&["true"])).await;
        assert_eq!(status, 0);

        let mut bad_root = spec(&["true"]);
        bad_root["root"]["path"] = json!("/run/bazaar/shared/no-such-rootfs");
        let err = env.create(&env.id("noroot"), &bad_root, false, false).await.expect_err("create");
        let status = status_of(err);
        assert_eq!(status.code(), ttrpc::Code::NOT_FOUND);
        assert!(status.message().contains("no-such-rootfs"), "message: {}", status.message());

        let err = env
            .create(&env.id("badjson"), &json!({"process": 1}), false, false)
            .await
            .expect_err("create");
        assert_eq!(status_of(err).code(), ttrpc::Code::INVALID_ARGUMENT);
    })
    .await;
}

#[tokio::test]
async fn sigkill_gives_137() {
    if !common::can_run("sigkill_gives_137") {
        return;
    }
    bounded(async {
        let env = Env::start("kill", &[]).await;
        let id = env.id("sleeper");
        env.create(&id, &spec(&["sleep", "1000"]), false, false).await.expect("CreateContainer");
        let pid = env.start_container(&id).await;
        assert!(pid > 1);
        env.signal(&id, "", 9, false).await.expect("SignalProcess");
        assert_eq!(env.wait(&id, "").await, 137);
        // Waiting again, and signalling an exited process.
        assert_eq!(env.wait(&id, "").await, 137);
        let err = env.signal(&id, "", 9, false).await.expect_err("signal after exit");
        assert_eq!(status_of(err).code(), ttrpc::Code::NOT_FOUND);
        env.remove(&id).await;
        let err = env.signal(&id, "", 9, false).await.expect_err("signal after remove");
        assert_eq!(status_of(err).code(), ttrpc::Code::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn env_cwd_and_user() {
    if !common::can_run("env_cwd_and_user") {
        return;
    }
    bounded(async {
        let env = Env::start("user", &[]).await;
        let mut s =
            spec(&["sh", "-c", "echo $FOO; pwd; id -u; id -g; id -G; echo $HOME; env | wc -l"]);
        s["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
        s["process"]["cwd"] = json!("/home/alice");
        s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [50]});
        let (status, stdout, stderr) = env.run(&env.id("alice"), &s).await;
        assert_eq!(status, 0, "stderr: {stderr}");
        // env: PATH, FOO, HOME (added from /etc/passwd), plus PWD/SHLVL that sh itself exports.
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            &lines[..6],
            &["bar", "/home/alice", "1000", "1000", "1000 50", "/home/alice"],
            "{stdout}"
        );

        // A missing cwd is created, as runc does; one that cannot be (under a file) fails.
        let mut bad_cwd = spec(&["true"]);
        bad_cwd["process"]["cwd"] = json!("/bin/busybox/sub");
        let err = env.create(&env.id("badcwd"), &bad_cwd, false, false).await.expect_err("create");
        assert!(status_of(err).message().contains("/bin/busybox/sub"));
    })
    .await;
}

#[tokio::test]
async fn exec_into_a_running_container() {
    if !common::can_run("exec_into_a_running_container") {
        return;
    }
    bounded(async {
        let env = Env::start("exec", &[]).await;
        let id = env.id("host");
        env.create(&id, &spec(&["sleep", "1000"]), false, false).await.expect("CreateContainer");
        let init_pid = env.start_container(&id).await;

        let process = json!({
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "echo exec-ok; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; read line; echo got $line"],
            "env": ["PATH=/bin"],
            "cwd": "/tmp"
        });
        let mut req = ExecProcessRequest::new();
        req.container_id = id.clone();
        req.exec_id = "e1".to_string();
        req.oci_process_json = serde_json::to_vec(&process).expect("process json");
        req.stdin = true;
        let response = env.client.exec_process(ctx(), &req).await.expect("ExecProcess");
        assert!(response.pid > 1 && response.pid != init_pid);
        let err = env.client.exec_process(ctx(), &req).await.expect_err("duplicate exec id");
        assert_eq!(status_of(err).code(), ttrpc::Code::ALREADY_EXISTS);

        let mut write = WriteStreamRequest::new();
        write.container_id = id.clone();
        write.exec_id = "e1".to_string();
        write.data = b"line\n".to_vec();
        env.client.write_stdin(ctx(), &write).await.expect("WriteStdin");
        assert_eq!(env.wait(&id, "e1").await, 0);
        let stdout = String::from_utf8(env.read_all(&id, "e1", false).await).expect("utf8");
        assert_eq!(stdout, "exec-ok\nbazaar-test\nsleep 1000 \ngot line\n");

        let mut missing = req.clone();
        missing.exec_id = "e2".to_string();
        missing.oci_process_json = serde_json::to_vec(&json!({
            "user": {"uid": 0, "gid": 0}, "args": ["nosuchcmd"], "env": ["PATH=/bin"], "cwd": "/"
        }))
        .expect("process json");
        let err = env.client.exec_process(ctx(), &missing).await.expect_err("exec of a missing binary");
        let status = status_of(err);
        assert_eq!(status.code(), ttrpc::Code::NOT_FOUND);
        assert!(status.message().contains("nosuchcmd"));

        // Removing the container kills its init (and with it the PID namespace).
        env.remove(&id).await;
    })
    .await;
}

#[tokio::test]
async fn large_output_is_not_lost() {
    if !common::can_run("large_output_is_not_lost") {
        return;
    }
    bounded(async {
        let env = Env::start("large", &[]).await;
        let id = env.id("seq");
        env.create(&id, &spec(&["seq", "1", "50000"]), false, false)
            .await
            .expect("CreateContainer");
        env.start_container(&id).await;
        // More than a pipe buffer: the process blocks until we read, then exits.
        let stdout = env.read_all(&id, "", false).await;
        assert_eq!(env.wait(&id, "").await, 0);
        let text = String::from_utf8(stdout).expect("utf8");
        assert_eq!(text.lines().count(), 50000);
        assert!(text.ends_with("49999\n50000\n"));
        env.remove(&id).await;
    })
    .await;
}

#[tokio::test]
async fn terminal_merges_output() {
    if !common::can_run("terminal_merges_output") {
        return;
    }
    bounded(async {
        let env = Env::start("tty", &[]).await;
        let id = env.id("tty");
        // The terminal is a pty of the container's own devpts, as under runc.
        let s = spec(&["sh", "-c", "echo out; echo err >&2; test -t 0 && echo is-a-tty; tty"]);
        env.create(&id, &s, true, false).await.expect("CreateContainer");
        let mut resize = TtyWinResizeRequest::new();
        resize.container_id = id.clone();
        resize.rows = 40;
        resize.columns = 100;
        env.client.tty_win_resize(ctx(), &resize).await.expect("TtyWinResize");
        env.start_container(&id).await;
        assert_eq!(env.wait(&id, "").await, 0);
        let stdout = String::from_utf8(env.read_all(&id, "", false).await).expect("utf8");
        assert_eq!(stdout, "out\r\nerr\r\nis-a-tty\r\n/dev/pts/0\r\n");
        assert!(env.read_all(&id, "", true).await.is_empty());
        env.remove(&id).await;

        // An exec'd process with a terminal, next to a plain init.
        let id = env.id("tty-exec");
        env.create(&id, &spec(&["sleep", "1000"]), false, false).await.expect("CreateContainer");
        env.start_container(&id).await;
        let mut req = ExecProcessRequest::new();
        req.container_id = id.clone();
        req.exec_id = "t".to_string();
        req.terminal = true;
        req.oci_process_json = serde_json::to_vec(&json!({
            "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"], "cwd": "/",
            "args": ["sh", "-c", "test -t 1 && echo exec-tty; tty"]
        }))
        .expect("process json");
        env.client.exec_process(ctx(), &req).await.expect("ExecProcess");
        assert_eq!(env.wait(&id, "t").await, 0);
        assert_eq!(env.read_all(&id, "t", false).await, b"exec-tty\r\n/dev/pts/0\r\n");
        env.remove(&id).await;
    })
    .await;
}

#[tokio::test]
async fn no_pivot_root_switch() {
    if !common::can_run("no_pivot_root_switch") {
        return;
    }
    bounded(async {
        // The guest's root is an initramfs, where only MS_MOVE + chroot works.
        let env = Env::start("nopivot", &["--no-pivot"]).await;
        let (status, stdout, stderr) =
            env.run(&env.id("nopivot"), &spec(&["sh", "-c", "echo hello; ls /"])).await;
        assert_eq!(status, 0, "stderr: {stderr}");
        assert_eq!(stdout, "hello\nbin\ndev\netc\nhome\nproc\nroot\nsys\ntmp\n");
    })
    .await;
}

#[tokio::test]
async fn cgroup_operations() {
    if !common::can_run("cgroup_operations") {
        return;
    }
    bounded(async {
        let env = Env::start("cgroup", &[]).await;
        let id = env.id("cg");
        env.create(&id, &spec(&["sh", "-c", "sleep 1000 & sleep 1000"]), false, false)
            .await
            .expect("CreateContainer");
        let pid = env.start_container(&id).await;
        let mut list = ListProcessesRequest::new();
        list.container_id = id.clone();
        let mut pids = Vec::new();
        for _ in 0..100 {
            pids = env.client.list_processes(ctx(), &list).await.expect("ListProcesses").pids;
            if pids.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(pids.contains(&pid), "{pids:?} lacks {pid}");

        let mut stats = StatsContainerRequest::new();
        stats.container_id = id.clone();
        match env.client.stats_container(ctx(), &stats).await {
            Ok(stats) => {
                eprintln!("stats: pids={} cpu={}us", stats.pids_current, stats.cpu_usage_usec)
            }
            Err(err) => eprintln!("stats unavailable here: {err:?}"),
        }
        let mut pause = PauseContainerRequest::new();
        pause.container_id = id.clone();
        match env.client.pause_container(ctx(), &pause).await {
            Ok(_) => {
                let mut resume = ResumeContainerRequest::new();
                resume.container_id = id.clone();
                env.client.resume_container(ctx(), &resume).await.expect("ResumeContainer");
            }
            Err(err) => {
                // Only acceptable where the agent has no cgroup v2 at all.
                assert_eq!(status_of(err).code(), ttrpc::Code::FAILED_PRECONDITION);
                eprintln!("pause unavailable here (no cgroup v2)");
            }
        }
        let mut update = UpdateContainerRequest::new();
        update.container_id = id.clone();
        update.oci_resources_json = br#"{"pids":{"limit":100}}"#.to_vec();
        if let Err(err) = env.client.update_container(ctx(), &update).await {
            // A cgroup v2 without the pids controller (a hybrid host's unified mount).
            assert_eq!(status_of(err).code(), ttrpc::Code::FAILED_PRECONDITION);
        }
        update.oci_resources_json = b"{not json".to_vec();
        let err = env.client.update_container(ctx(), &update).await.expect_err("bad resources");
        assert_eq!(status_of(err).code(), ttrpc::Code::INVALID_ARGUMENT);
        env.signal(&id, "", 9, true).await.expect("SignalProcess all");
        assert_eq!(env.wait(&id, "").await, 137);
        env.remove(&id).await;
    })
    .await;
}

#[tokio::test]
async fn health_version_and_destroy() {
    if !common::can_run("health_version_and_destroy") {
        return;
    }
    bounded(async {
        let mut env = Env::start("health", &[]).await;
        let check = env.client.check(ctx(), &CheckRequest::new()).await.expect("Check");
        assert_eq!(
            check.status.enum_value_or_default(),
            health_check_response::ServingStatus::SERVING
        );
        let version = env.client.version(ctx(), &VersionRequest::new()).await.expect("Version");
        assert_eq!(version.api_version, bazaar_protocols::AGENT_API_VERSION);
        assert!(!version.kernel_release.is_empty());

        let mut again = CreateSandboxRequest::new();
        again.sandbox_id = "other".to_string();
        let err = env.client.create_sandbox(ctx(), &again).await.expect_err("second CreateSandbox");
        assert_eq!(status_of(err).code(), ttrpc::Code::FAILED_PRECONDITION);

        // A created (never started) container is killed by DestroySandbox, then the agent exits.
        let id = env.id("pending");
        env.create(&id, &spec(&["sleep", "1000"]), false, false).await.expect("CreateContainer");
        let mut destroy = DestroySandboxRequest::new();
        destroy.sandbox_id = format!("sandbox-{}", env.suffix);
        env.client.destroy_sandbox(ctx(), &destroy).await.expect("DestroySandbox");
        assert!(env.wait_agent_exit(Duration::from_secs(10)), "the agent did not exit");
    })
    .await;
}

#[tokio::test]
async fn cgroup_namespace_readonly_root_and_bind_mounts() {
    if !common::can_run("cgroup_namespace_readonly_root_and_bind_mounts") {
        return;
    }
    bounded(async {
        let env = Env::start("cgns", &[]).await;
        // A bind mount source under the shared directory, named by its guest path.
        let data = env.shared.join("data");
        std::fs::create_dir_all(&data).expect("mkdir data");
        std::fs::write(data.join("file"), "shared-data\n").expect("write data");
        let mut s = spec(&[
            "sh",
            "-c",
            "grep ^0:: /proc/self/cgroup; test -e /sys/fs/cgroup/cgroup.procs && echo cgroupfs; \
             touch /newfile 2>/dev/null || echo ro-root; cat /mnt/data/file; \
             touch /mnt/data/x 2>/dev/null || echo ro-bind",
        ]);
        s["root"]["readonly"] = json!(true);
        s["linux"]["namespaces"] =
            json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "cgroup"}]);
        let mounts = s["mounts"].as_array_mut().expect("mounts");
        mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                           "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}));
        mounts.push(json!({"destination": "/mnt/data", "type": "bind",
                           "source": "/run/bazaar/shared/data", "options": ["rbind", "ro"]}));
        let (status, stdout, stderr) = env.run(&env.id("cgns"), &s).await;
        assert_eq!(status, 0, "stderr: {stderr}");
        assert_eq!(stdout, "0::/\ncgroupfs\nro-root\nshared-data\nro-bind\n", "stderr: {stderr}");
    })
    .await;
}
