//! OCI hooks, differentially: the same complete runtime spec (`ctr run --config`, a busybox
//! rootfs directory as its root) runs under runc and under Bazaar, with a hook of every kind
//! that appends its kind and the state JSON it was given on stdin to a host file. Both runtimes
//! must run the same hooks, in the same order, with the same container id and status (but for
//! runc 1.1's early poststart, a documented exception); Bazaar runs them all on the host
//! (`docs/oci-fidelity.md`).
//!
//! Where runc runs them: prestart, createRuntime, poststart and poststop on the host,
//! createContainer in the container's mount namespace before the root switch (host paths still
//! visible), startContainer inside the container. So the hooks are `/bin/sh` (the host's dash,
//! or the image's busybox for startContainer under runc), and the directory holding the log is
//! bind-mounted into the container at the same path.

use std::path::{Path, PathBuf};

use std::os::unix::fs::PermissionsExt;

use bazaar_tests::ctr::CtrRun;
use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::image;
use bazaar_tests::process::Output;
use serde_json::{json, Value};

/// Each hook: `{ printf '%s ' KIND; cat; echo; } >> LOG` (the kind is `$0`).
const LOG_SCRIPT: &str = r#"{ printf '%s ' "$0"; cat; echo; } >> "$HOOK_LOG""#;
const HOOK_PATH_ENV: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// Hook kinds in the spec's JSON names, in lifecycle order.
const KINDS: &[&str] =
    &["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];

/// One line of the hook log.
#[derive(Debug, Clone)]
struct Call {
    kind: String,
    state: Value,
}

impl Call {
    fn summary(&self) -> String {
        format!(
            "{} {} {}",
            self.kind,
            self.state["id"].as_str().unwrap_or("?"),
            self.state["status"].as_str().unwrap_or("?")
        )
    }
}

/// The files of one run: its rootfs, spec and hook log, under the test's temp dir.
struct Run {
    id: String,
    spec: PathBuf,
    log: PathBuf,
}

impl Run {
    fn calls(&self) -> Vec<Call> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let (kind, state) = line.split_once(' ').unwrap_or((line, ""));
                let state = serde_json::from_str(state)
                    .unwrap_or_else(|err| panic!("hook log line {line:?}: {err}"));
                Call { kind: kind.to_string(), state }
            })
            .collect()
    }

    /// `kind id status` per call, with the run's id replaced by `ID` (ids differ per runtime).
    fn sequence(&self) -> Vec<String> {
        self.calls().iter().map(|c| c.summary().replace(&self.id, "ID")).collect()
    }
}

fn log_hook(kind: &str, log: &Path) -> Value {
    json!({
        "path": "/bin/sh",
        // busybox picks its applet from argv0: it must be `sh`.
        "args": ["sh", "-c", LOG_SCRIPT, kind],
        "env": [HOOK_PATH_ENV, format!("HOOK_LOG={}", log.display())],
        "timeout": 30,
    })
}

/// Writes a rootfs, a hook log directory and a spec for container `id` running `args`, with
/// `hooks(log)` as its hooks; the spec starts from `ctr oci spec` (containerd's default).
fn prepare(env: &TestEnv, id: &str, args: &[&str], hooks: impl Fn(&Path) -> Value) -> Run {
    let dir = env.containerd().dir().join(format!("hooks-{id}"));
    let rootfs = dir.join("rootfs");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("create the hook log dir");
    image::populate_rootfs(&rootfs).expect("write the rootfs");
    let log = logs.join("hooks.log");

    let default = env.ctr(&["oci", "spec"]);
    env.assert_success(&default);
    let mut spec: Value = serde_json::from_str(&default.stdout).expect("ctr oci spec is JSON");
    spec["root"] = json!({ "path": rootfs, "readonly": false });
    // As containerd names it for `ctr run` (`/<namespace>/<id>`); `ctr oci spec` gives the
    // namespace's own cgroup, which runc would configure (and remove) for every container.
    spec["linux"]["cgroupsPath"] = json!(format!("/default/{id}"));
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!([image::IMAGE_PATH_ENV]);
    // runc's startContainer hook runs inside the container: the log must be there too.
    let bind = json!({
        "destination": logs, "type": "bind", "source": logs, "options": ["rbind", "rw"],
    });
    spec["mounts"].as_array_mut().expect("the default spec has mounts").push(bind);
    spec["hooks"] = hooks(&log);
    let spec_path = dir.join("config.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).expect("spec as JSON"))
        .expect("write the spec");
    Run { id: id.to_string(), spec: spec_path, log }
}

fn every_kind(log: &Path) -> Value {
    let mut hooks = serde_json::Map::new();
    for kind in KINDS {
        hooks.insert(kind.to_string(), json!([log_hook(kind, log)]));
    }
    Value::Object(hooks)
}

/// A `ctr run --rm --config` of `run` under `rt`.
fn ctr_run(env: &TestEnv, run: &Run, rt: Runtime) -> Output {
    CtrRun::new(env.containerd(), rt.containerd_name(), image::IMAGE, &run.id, rt.default_timeout())
        .config(&run.spec)
        .run()
}

/// Every hook kind runs once, in lifecycle order, with the statuses runc gives, under both.
#[test]
fn hooks_run_in_order_with_runc_statuses() {
    let Some(env) = TestEnv::start("e2e_oci_hooks-order", Runtime::Bazaar) else { return };
    let runc = prepare(&env, &env.new_id("hooks-runc"), &["sh", "-c", "echo ran"], every_kind);
    let bazaar = prepare(&env, &env.new_id("hooks-bz"), &["sh", "-c", "echo ran"], every_kind);

    let out = ctr_run(&env, &runc, Runtime::Runc);
    env.assert_success(&out);
    assert_eq!(out.stdout, "ran\n", "{}", out.describe());
    let out = ctr_run(&env, &bazaar, Runtime::Bazaar);
    env.assert_success(&out);
    assert_eq!(out.stdout, "ran\n", "{}", out.describe());

    // runc 1.1 runs poststart at the end of `runc create` (status "created"), before the
    // process runs and before startContainer: runc#4347, fixed by runc#5186. Bazaar follows the
    // runtime spec (after the process started, before Start returns): exception
    // `runc-poststart-at-create` in docs/oci-fidelity.md. Everything else must be equal.
    let runc_expected = [
        "prestart ID creating",
        "createRuntime ID creating",
        "createContainer ID creating",
        "poststart ID created",
        "startContainer ID created",
        "poststop ID stopped",
    ];
    let bazaar_expected = [
        "prestart ID creating",
        "createRuntime ID creating",
        "createContainer ID creating",
        "startContainer ID created",
        "poststart ID running",
        "poststop ID stopped",
    ];
    assert_eq!(runc.sequence(), runc_expected, "runc's hook calls (the reference)");
    assert_eq!(bazaar.sequence(), bazaar_expected, "Bazaar's hook calls");
    let without_poststart =
        |run: &Run| run.sequence().into_iter().filter(|c| !c.starts_with("poststart "));
    assert!(
        without_poststart(&bazaar).eq(without_poststart(&runc)),
        "Bazaar's hook calls differ from runc's beyond the poststart exception"
    );

    // Bazaar's state: the bundle containerd gave, the spec's version-independent fields, and
    // one host pid (the VMM's) for every hook, since all of them ran while the VM existed.
    let calls = bazaar.calls();
    let pids: Vec<u64> = calls.iter().map(|c| c.state["pid"].as_u64().unwrap_or(0)).collect();
    assert!(pids.iter().all(|&p| p > 0 && p == pids[0]), "pids: {pids:?}");
    for call in &calls {
        let bundle = call.state["bundle"].as_str().unwrap_or("");
        assert!(bundle.ends_with(&bazaar.id), "{}: bundle {bundle:?}", call.kind);
        assert!(call.state["ociVersion"].as_str().is_some_and(|v| v.starts_with("1.")));
    }
    env.finish();
}

/// A failing createRuntime hook fails `ctr run` with an error naming the hook, its exit status
/// and stderr, and leaves nothing behind (the leak check); poststop runs as under runc.
#[test]
fn failing_create_runtime_hook_fails_the_run() {
    let Some(env) = TestEnv::start("e2e_oci_hooks-failing", Runtime::Bazaar) else { return };
    let refuse = |log: &Path| {
        let hook_path = log.parent().expect("log dir").join("refuse-hook");
        let script = format!(
            "#!/bin/sh\n{{ printf 'createRuntime '; cat; echo; }} >> '{}'\n\
             echo 'hook says no' >&2\nexit 7\n",
            log.display()
        );
        std::fs::write(&hook_path, script).expect("write the hook");
        std::fs::set_permissions(&hook_path, std::fs::Permissions::from_mode(0o755))
            .expect("make the hook executable");
        json!({
            "createRuntime": [{ "path": hook_path, "args": ["refuse-hook"] }],
            "poststop": [log_hook("poststop", log)],
        })
    };
    let runc = prepare(&env, &env.new_id("refused-runc"), &["true"], refuse);
    let bazaar = prepare(&env, &env.new_id("refused-bz"), &["true"], refuse);

    let runc_out = ctr_run(&env, &runc, Runtime::Runc);
    assert!(!runc_out.success() && !runc_out.timed_out, "runc: {}", runc_out.describe());
    let out = ctr_run(&env, &bazaar, Runtime::Bazaar);
    assert!(!out.success() && !out.timed_out, "Bazaar ran anyway: {}", out.describe());
    let hook = bazaar.log.parent().expect("log dir").join("refuse-hook");
    for needle in [
        format!("createRuntime hook {}", hook.display()),
        "exit status 7".to_string(),
        "hook says no".to_string(),
    ] {
        assert!(out.stderr.contains(&needle), "no {needle:?} in: {}", out.describe());
    }
    assert_eq!(
        bazaar.sequence(),
        runc.sequence(),
        "hook calls of a refused create differ from runc's (runc's stderr: {})",
        runc_out.stderr
    );
    for id in [&runc.id, &bazaar.id] {
        assert_eq!(env.task_status(id), None, "task {id} still listed");
    }
    let containers = env.ctr(&["containers", "list", "--quiet"]);
    assert_eq!(containers.stdout.trim(), "", "containers left: {}", containers.stdout);
    env.finish();
}
