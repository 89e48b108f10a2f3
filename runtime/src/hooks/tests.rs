//! Hooks run as real processes (`/bin/sh` scripts) in a temp dir.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, HookBuilder, Hooks, HooksBuilder, Spec};

use super::*;

fn sh_hook(script: &str, env: &[&str], timeout: Option<i64>) -> Hook {
    let mut builder = HookBuilder::default()
        .path("/bin/sh")
        .args(vec!["hook-argv0".to_string(), "-c".to_string(), script.to_string()])
        .env(env.iter().map(|e| e.to_string()).collect::<Vec<_>>());
    if let Some(secs) = timeout {
        builder = builder.timeout(secs);
    }
    builder.build().unwrap()
}

fn logger() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

fn state_json(dir: &Path) -> Vec<u8> {
    let annotations = HashMap::from([("a".to_string(), "b".to_string())]);
    let state = State {
        oci_version: STATE_OCI_VERSION,
        id: "c1",
        status: "creating",
        pid: 42,
        bundle: dir,
        annotations: &annotations,
    };
    serde_json::to_vec(&state).unwrap()
}

#[tokio::test]
async fn a_hook_gets_its_args_env_state_and_the_bundle_as_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo \"$0 $1\" > seen; env | sort > env; cat > state; pwd > cwd";
    let hook = sh_hook(script, &["ONLY=this", "WITH=a=b"], None);
    run_hook(&hook, &state_json(dir.path()), dir.path()).await.unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(read("seen"), "hook-argv0 \n");
    // dash adds PWD to what it exports; nothing of the test's environment leaks in.
    let env: Vec<String> =
        read("env").lines().filter(|l| !l.starts_with("PWD=")).map(str::to_string).collect();
    assert_eq!(env, ["ONLY=this", "WITH=a=b"]);
    let state: serde_json::Value = serde_json::from_str(&read("state")).unwrap();
    assert_eq!(state["ociVersion"], STATE_OCI_VERSION);
    assert_eq!(state["id"], "c1");
    assert_eq!(state["status"], "creating");
    assert_eq!(state["pid"], 42);
    assert_eq!(state["bundle"], dir.path().display().to_string());
    assert_eq!(state["annotations"]["a"], "b");
    assert_eq!(read("cwd").trim(), dir.path().display().to_string());
}

#[tokio::test]
async fn a_hook_without_env_inherits_the_runtime_environment() {
    let dir = tempfile::tempdir().unwrap();
    let hook = HookBuilder::default()
        .path("/bin/sh")
        .args(vec!["sh".to_string(), "-c".to_string(), "env > env".to_string()])
        .build()
        .unwrap();
    run_hook(&hook, b"{}", dir.path()).await.unwrap();
    let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    assert!(env.lines().any(|l| l == format!("PATH={path}")), "{env}");
}

#[tokio::test]
async fn a_failing_hook_reports_its_exit_status_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let hook = sh_hook("echo boom >&2; exit 3", &[], None);
    let err = run_hook(&hook, b"{}", dir.path()).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("exit status 3"), "{message}");
    assert!(message.contains("stderr: boom"), "{message}");
}

#[tokio::test]
async fn a_missing_hook_binary_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let hook = HookBuilder::default().path("/nonexistent/hook").build().unwrap();
    let err = run_hook(&hook, b"{}", dir.path()).await.unwrap_err();
    assert!(format!("{err:#}").contains("cannot start it"), "{err:#}");
}

#[tokio::test]
async fn a_hook_past_its_timeout_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let hook = sh_hook("echo $$ > pid; exec sleep 30", &[], Some(1));
    let start = Instant::now();
    let err = run_hook(&hook, b"{}", dir.path()).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(format!("{err:#}").contains("timeout of 1s"), "{err:#}");
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    // Killed and reaped: the pid is gone (not a zombie).
    assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists(), "hook {pid} still there");
}

#[tokio::test]
async fn a_hook_that_ignores_a_large_state_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let annotations = HashMap::from([("big".to_string(), "x".repeat(1 << 20))]);
    let state = State {
        oci_version: STATE_OCI_VERSION,
        id: "c1",
        status: "creating",
        pid: 1,
        bundle: dir.path(),
        annotations: &annotations,
    };
    let hook = sh_hook("exit 0", &[], Some(5));
    run_hook(&hook, &serde_json::to_vec(&state).unwrap(), dir.path()).await.unwrap();
}

fn spec_with(hooks: Hooks) -> Spec {
    let mut spec = Spec::default();
    spec.set_hooks(Some(hooks));
    spec
}

#[tokio::test]
async fn a_fatal_kind_stops_at_the_first_failure() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = HooksBuilder::default()
        .create_runtime(vec![
            sh_hook("echo first >> log; exit 1", &[], None),
            sh_hook("echo second >> log", &[], None),
        ])
        .build()
        .unwrap();
    let hooks = ContainerHooks::from_spec(&spec_with(hooks));
    let err = hooks.run(HookKind::CreateRuntime, "c1", 1, dir.path(), &logger()).await.unwrap_err();
    assert!(format!("{err:#}").starts_with("createRuntime hook /bin/sh: exit status 1"), "{err:#}");
    assert_eq!(std::fs::read_to_string(dir.path().join("log")).unwrap(), "first\n");
}

#[tokio::test]
async fn poststart_and_poststop_failures_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let failing_then_ok =
        || vec![sh_hook("exit 1", &[], None), sh_hook("cat >> states; echo >> states", &[], None)];
    let hooks = HooksBuilder::default()
        .poststart(failing_then_ok())
        .poststop(failing_then_ok())
        .build()
        .unwrap();
    let hooks = ContainerHooks::from_spec(&spec_with(hooks));
    for kind in [HookKind::Poststart, HookKind::Poststop] {
        hooks.run(kind, "c1", 1, dir.path(), &logger()).await.unwrap();
    }
    let states = std::fs::read_to_string(dir.path().join("states")).unwrap();
    let statuses: Vec<String> = states
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["status"].to_string())
        .collect();
    assert_eq!(statuses, ["\"running\"", "\"stopped\""]);
}

#[test]
fn relative_hook_paths_are_refused() {
    let hook = HookBuilder::default().path("bin/hook").build().unwrap();
    let spec = spec_with(HooksBuilder::default().poststop(vec![hook]).build().unwrap());
    let err = validate(&spec).unwrap_err();
    assert!(err.to_string().contains("poststop hook path bin/hook is not absolute"), "{err}");
    assert!(validate(&Spec::default()).is_ok());
}

#[test]
fn dockers_network_hook_is_refused() {
    let hook = HookBuilder::default()
        .path("/proc/4242/exe")
        .args(vec!["libnetwork-setkey".to_string(), "-exec-root=/var/run/docker".to_string()])
        .build()
        .unwrap();
    let spec = spec_with(HooksBuilder::default().prestart(vec![hook]).build().unwrap());
    let err = validate(&spec).unwrap_err().to_string();
    assert!(err.contains("prestart hook is Docker's network setup"), "{err}");
    assert!(err.contains("--network none"), "{err}");
}
