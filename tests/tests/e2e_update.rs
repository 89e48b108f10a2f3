//! Update (new CPU and memory limits for a running container) and the status codes of the
//! shim's own answers, through the shim's Task API.
//!
//! ctr 1.6 has no `ctr task update`, and for an unknown container id containerd answers
//! NotFound itself without asking the runtime. These tests therefore call the shim's ttrpc Task
//! service directly ([`bazaar_tests::shim_ttrpc`]) with the requests containerd would pass on
//! unchanged (containerd's Update is a pass-through). Everything else goes through ctr.

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::shim_ttrpc::{code, shim_socket, ShimClient, Status};

use bazaar_tests::both_runtimes;

both_runtimes!(update_resources, shim_status_codes);

const MIB: u64 = 1024 * 1024;

fn name(scenario: &str, rt: Runtime) -> String {
    format!("e2e_update-{scenario}-{rt:?}").to_lowercase()
}

/// As in e2e_lifecycle.rs: the container's memory limit and CPU quota from cgroup v1 or v2.
const CGROUP_MOUNT: &str = "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro";
const CGROUP_PROBE: &str = r#"if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  echo "memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
  q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); [ "$q" = -1 ] && q=max
  echo "cpu=$q $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
else
  p=$(sed -n 's/^0:://p' /proc/self/cgroup); d=/sys/fs/cgroup$p
  [ -f "$d/memory.max" ] || d=/sys/fs/cgroup
  echo "memory=$(cat $d/memory.max)"; echo "cpu=$(cat $d/cpu.max)"
fi"#;

/// Update with new memory and CPU limits: the container's cgroup (in the guest under Bazaar)
/// reads the new values, `ctr task metrics` reports the new limit, and the new memory limit is
/// enforced (an allocation that fitted before is OOM-killed, 137).
fn update_resources(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("resources", rt), rt) else { return };
    let run = env
        .run("updated")
        .flag("--memory-limit")
        .flag(&(64 * MIB).to_string())
        .flag("--cpu-quota")
        .flag("50000")
        .flag("--cpu-period")
        .flag("100000")
        .flag("--mount")
        .flag(CGROUP_MOUNT)
        .args(["sleep", "600"])
        .detach();
    let id = env.start_detached(run);
    let probe = |exec_id: &str| env.exec(&id, exec_id).args(["sh", "-c", CGROUP_PROBE]).run();
    let out = probe("before");
    assert_eq!(
        out.stdout,
        format!("memory={}\ncpu=50000 100000\n", 64 * MIB),
        "{}",
        out.describe()
    );
    // 40 MiB fit under 64 MiB.
    let hog = "head -c 40m /dev/zero | tail > /dev/null";
    let out = env.exec(&id, "hog-before").args(["sh", "-c", hog]).run();
    assert_eq!(
        out.code,
        Some(0),
        "40 MiB under a 64 MiB limit: {}\nlog:\n{}",
        out.describe(),
        env.log_tail()
    );

    let socket = shim_socket(env.containerd(), &id).unwrap();
    let mut shim = ShimClient::connect(&socket).unwrap();
    let new_limit = 32 * MIB;
    let resources =
        format!(r#"{{"memory":{{"limit":{new_limit}}},"cpu":{{"quota":25000,"period":100000}}}}"#);
    let answer = shim.update(&id, &resources).unwrap();
    assert_eq!(answer, Ok(()), "Update {resources}\nlog:\n{}", env.log_tail());

    let mut failures = Vec::new();
    let out = probe("after");
    let expect = format!("memory={new_limit}\ncpu=25000 100000\n");
    if out.stdout != expect {
        failures.push(format!("cgroup after Update: expected {expect:?}: {}", out.describe()));
    }
    let metrics = env.ctr(&["tasks", "metrics", "--format", "json", &id]);
    let json: serde_json::Value = serde_json::from_str(&metrics.stdout).unwrap_or_default();
    let limit = ["/memory/usage/limit", "/memory/usage_limit"]
        .iter()
        .find_map(|p| json.pointer(p).and_then(serde_json::Value::as_u64));
    if limit != Some(new_limit) {
        failures
            .push(format!("metrics after Update: memory limit {limit:?}, expected {new_limit}"));
    }
    let out = env.exec(&id, "hog-after").args(["sh", "-c", hog]).run();
    if out.code != Some(137) {
        failures.push(format!(
            "40 MiB under the updated 32 MiB limit must be OOM-killed: {}",
            out.describe()
        ));
    }
    assert!(failures.is_empty(), "{}\nlog:\n{}", failures.join("\n"), env.log_tail());
    env.remove_container(&id);
    env.finish();
}

/// The shim answers calls about a container or exec it does not have with NotFound (code 5),
/// as runc's shim does. runc's message names the exec id, not an unknown container id ("container
/// not created"); runc's CloseIO answers an unknown exec with code Unknown but the text
/// "not found" (what containerd's errdefs would turn into NotFound), which is also accepted.
fn shim_status_codes(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("codes", rt), rt) else { return };
    let id = env.start_detached(env.run("known").args(["sleep", "600"]).detach());
    let socket = shim_socket(env.containerd(), &id).unwrap();
    let mut shim = ShimClient::connect(&socket).unwrap();
    let mut failures = Vec::new();
    let mut expect = |what: &str, answer: Result<(), Status>, word: &str| match answer {
        Err(s)
            if (s.code == code::NOT_FOUND || s.message.ends_with("not found"))
                && s.message.contains(word) => {}
        other => failures.push(format!(
            "{what}: expected NotFound (code {}) naming {word:?}, got {other:?}",
            code::NOT_FOUND
        )),
    };
    let unknown = "nosuch-container";
    expect("State of an unknown id", shim.call_id("State", unknown, "").unwrap().map(|_| ()), "");
    expect("Pids of an unknown id", shim.call_id("Pids", unknown, "").unwrap().map(|_| ()), "");
    expect("Kill of an unknown id", shim.kill(unknown, "", 9).unwrap(), "");
    expect("Update of an unknown id", shim.update(unknown, "{}").unwrap(), "");
    expect("Stats of an unknown id", shim.call_id("Stats", unknown, "").unwrap().map(|_| ()), "");
    expect("Pause of an unknown id", shim.call_id("Pause", unknown, "").unwrap().map(|_| ()), "");
    let exec = "nosuch-exec";
    expect("State of an unknown exec", shim.call_id("State", &id, exec).unwrap().map(|_| ()), exec);
    expect("Kill of an unknown exec", shim.kill(&id, exec, 9).unwrap(), exec);
    expect("ResizePty of an unknown exec", shim.resize_pty(&id, exec, 80, 24).unwrap(), exec);
    expect("CloseIO of an unknown exec", shim.close_io(&id, exec).unwrap(), exec);
    // And the container itself still answers.
    if let Err(s) = shim.call_id("State", &id, "").unwrap() {
        failures.push(format!("State of the running container failed: {s:?}"));
    }
    drop(shim);
    assert!(failures.is_empty(), "{}\nlog:\n{}", failures.join("\n"), env.log_tail());
    env.remove_container(&id);
    env.finish();
}
