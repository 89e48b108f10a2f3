//! The agent in its guest mode: PID 1 of its own namespaces (via `unshare`), so that the init
//! mounts, reaping as PID 1 (no subreaper) and the VM end (reboot) of DestroySandbox run for real
//! without a VM. Root only; SKIPs otherwise.

mod common;

use std::path::Path;
use std::time::Duration;

use bazaar_protocols::agent::*;
use common::{ctx, spec, Env};

#[tokio::test]
async fn agent_as_pid1() {
    if !common::can_run("agent_as_pid1") {
        return;
    }
    if !Path::new("/usr/bin/unshare").exists() {
        bazaar_tests::skip::skip("agent_as_pid1", "unshare (util-linux) is not installed");
        return;
    }
    let body = async {
        let mut env = Env::start_as_pid1("pid1").await;
        // Containers without a UTS namespace see the sandbox hostname that CreateSandbox set.
        let mut s = spec(&["sh", "-c", "echo hello; hostname; cat /proc/1/cmdline | tr '\\0' ' '"]);
        s["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}]);
        let (status, stdout, stderr) = env.run(&env.id("echo"), &s).await;
        assert_eq!(status, 0, "stderr: {stderr}");
        assert_eq!(stdout, "hello\nbazaar-pid1-host\nsh -c echo hello; hostname; cat /proc/1/cmdline | tr '\\0' ' ' ");

        let (status, _, _) = env.run(&env.id("exit"), &spec(&["sh", "-c", "exit 9"])).await;
        assert_eq!(status, 9);

        let mut destroy = DestroySandboxRequest::new();
        destroy.sandbox_id = format!("sandbox-{}", env.suffix);
        env.client.destroy_sandbox(ctx(), &destroy).await.expect("DestroySandbox");
        assert!(
            env.wait_agent_exit(Duration::from_secs(10)),
            "the agent did not end its namespace"
        );
    };
    tokio::time::timeout(Duration::from_secs(90), body).await.expect("test timed out");
}
