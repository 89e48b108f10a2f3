//! The rest of a running task's API: resources (CPU and memory limits applied where the
//! container runs), pids (`ctr task ps`), stats (`ctr task metrics`), pause/resume with their
//! events, memory limits enforced with a TaskOOM event, checkpoint.
//!
//! ctr 1.6 has no `ctr task update`: limits are given at create (`ctr run --memory-limit
//! --cpu-quota --cpu-period`), which puts them in the spec's `linux.resources`, and the container
//! reads them back from its cgroup; `e2e_update.rs` drives the Update call itself.
//! Host cgroups are v1 here, so runc's container sees v1 files (`memory.limit_in_bytes`,
//! `cpu.cfs_quota_us`), Bazaar's guest has v2 (`memory.max`, `cpu.max`): the probe prints both
//! the same way. ctr's default spec mounts no cgroupfs: the tests add one with `--mount`.

use std::time::{Duration, Instant};

use serde_json::Value;

use bazaar_tests::fixture::{Runtime, TestEnv};

use bazaar_tests::both_runtimes;

both_runtimes!(
    resources_pids_and_metrics,
    pause_and_resume,
    memory_limit_and_oom,
    checkpoint_not_implemented
);

const EVENT_WAIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

fn name(scenario: &str, rt: Runtime) -> String {
    format!("e2e_lifecycle-{scenario}-{rt:?}").to_lowercase()
}

/// `ctr run` flag mounting the cgroup filesystem read-only at /sys/fs/cgroup (runc: the v1
/// controllers of the container's cgroups; Bazaar: the guest's cgroup2).
pub const CGROUP_MOUNT: &str = "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro";

/// Prints the container's memory limit and CPU quota as `memory=<bytes|max>` and
/// `cpu=<quota|max> <period>`, from cgroup v1 or v2 files.
pub const CGROUP_PROBE: &str = r#"if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  echo "memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
  q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); [ "$q" = -1 ] && q=max
  echo "cpu=$q $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
else
  p=$(sed -n 's/^0:://p' /proc/self/cgroup); d=/sys/fs/cgroup$p
  [ -f "$d/memory.max" ] || d=/sys/fs/cgroup
  echo "memory=$(cat $d/memory.max)"; echo "cpu=$(cat $d/cpu.max)"
fi"#;

/// Numbers of `ctr task metrics --format json`, cgroup v1 (runc here) or v2 (Bazaar's guest).
#[derive(Debug)]
struct Metrics {
    pids: Option<u64>,
    memory_usage: Option<u64>,
    memory_limit: Option<u64>,
    cpu_usage: Option<u64>,
}

fn metrics(json: &Value) -> Metrics {
    let num = |ptrs: &[&str]| ptrs.iter().find_map(|p| json.pointer(p).and_then(Value::as_u64));
    Metrics {
        pids: num(&["/pids/current"]),
        memory_usage: num(&["/memory/usage/usage", "/memory/usage"]),
        memory_limit: num(&["/memory/usage/limit", "/memory/usage_limit"]),
        // v1: nanoseconds; v2: microseconds. Only "more than nothing" is checked.
        cpu_usage: num(&["/cpu/usage/total", "/cpu/usage_usec"]),
    }
}

/// Limits given at create are those of the container's cgroup; `ctr task ps` lists its
/// processes (the init's pid among them); `ctr task metrics` shows real numbers.
fn resources_pids_and_metrics(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("resources", rt), rt) else { return };
    let limit = 64 * MIB;
    let run = env
        .run("limited")
        .flag("--memory-limit")
        .flag(&limit.to_string())
        .flag("--cpu-quota")
        .flag("50000")
        .flag("--cpu-period")
        .flag("100000")
        .flag("--mount")
        .flag(CGROUP_MOUNT)
        .args(["sh", "-c", "sleep 600 & sleep 600 & wait"])
        .detach();
    let id = env.start_detached(run);
    let mut failures = Vec::new();

    let out = env.exec(&id, "cgroup").args(["sh", "-c", CGROUP_PROBE]).run();
    let expect = format!("memory={limit}\ncpu=50000 100000\n");
    if out.stdout != expect {
        failures.push(format!(
            "limits in the container's cgroup: expected {expect:?}: {}",
            out.describe()
        ));
    }

    // ps: the shell and its two sleeps (the probe exec is gone).
    let init_pid = env.task_status(&id).map(|s| s.0).unwrap_or(0);
    let start = Instant::now();
    let pids = loop {
        let out = env.ctr(&["tasks", "ps", &id]);
        env.assert_success(&out);
        let pids: Vec<u32> = out
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        if pids.len() == 3 || start.elapsed() > Duration::from_secs(20) {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if pids.len() != 3 {
        failures.push(format!("ctr task ps: expected 3 processes, got {pids:?}"));
    }
    if !pids.contains(&init_pid) {
        failures.push(format!("ctr task ps {pids:?} lacks the init pid {init_pid} of ctr task ls"));
    }

    let out = env.ctr(&["tasks", "metrics", "--format", "json", &id]);
    env.assert_success(&out);
    let json: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    let m = metrics(&json);
    if m.pids != Some(3) {
        failures.push(format!("metrics: pids.current {:?}, expected 3", m.pids));
    }
    if !m.memory_usage.is_some_and(|u| u > 0 && u < limit) {
        failures.push(format!(
            "metrics: memory usage {:?}, expected between 0 and the limit",
            m.memory_usage
        ));
    }
    if m.memory_limit != Some(limit) {
        failures.push(format!("metrics: memory limit {:?}, expected {limit}", m.memory_limit));
    }
    if m.cpu_usage.unwrap_or(0) == 0 {
        failures.push(format!("metrics: cpu usage {:?}, expected > 0", m.cpu_usage));
    }
    let table = env.ctr(&["tasks", "metrics", &id]);
    if !table.success() || !table.stdout.contains("pids.current") {
        failures.push(format!("ctr task metrics (table): {}", table.describe()));
    }
    assert!(
        failures.is_empty(),
        "{}\nmetrics json:\n{}\nlog:\n{}",
        failures.join("\n"),
        out.stdout,
        env.log_tail()
    );
    env.remove_container(&id);
    env.finish();
}

/// Pause freezes every process of the container (a counter stops counting), `ctr task ls` says
/// PAUSED, containerd hears /tasks/paused; resume thaws them, says RUNNING, /tasks/resumed.
fn pause_and_resume(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("pause", rt), rt) else { return };
    // Written aside and renamed: a reader never sees the file truncated and empty.
    let counter =
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; \
         sleep 0.1; done";
    let id = env.start_detached(env.run("counter").args(["sh", "-c", counter]).detach());
    let events = env.watch_events();
    let mut n = 0;
    let mut read = |env: &TestEnv| -> u64 {
        n += 1;
        let out = env.exec(&id, &format!("read{n}")).args(["cat", "/tmp/count"]).run();
        env.assert_success(&out);
        out.stdout.trim().parse().unwrap_or_else(|_| panic!("counter: {}", out.describe()))
    };
    let pause_for = Duration::from_secs(3);

    // How far it counts in `pause_for` (and one read) when running.
    let c0 = read(&env);
    std::thread::sleep(pause_for);
    let c1 = read(&env);
    let running_rate = c1 - c0;
    assert!(running_rate >= 5, "the counter hardly counts ({c0} -> {c1}): machine too slow?");

    env.assert_success(&env.ctr(&["tasks", "pause", &id]));
    let listed = env.task_status(&id);
    std::thread::sleep(pause_for);
    env.assert_success(&env.ctr(&["tasks", "resume", &id]));
    let c2 = read(&env);
    let after = env.task_status(&id);
    std::thread::sleep(Duration::from_secs(1));
    let c3 = read(&env);

    let mut failures = Vec::new();
    if listed.as_ref().map(|s| s.1.as_str()) != Some("PAUSED") {
        failures.push(format!("ctr task ls while paused: {listed:?}, expected PAUSED"));
    }
    if after.as_ref().map(|s| s.1.as_str()) != Some("RUNNING") {
        failures.push(format!("ctr task ls after resume: {after:?}, expected RUNNING"));
    }
    if c2 - c1 > running_rate / 2 {
        failures.push(format!(
            "the container kept running while paused: counted {} in {pause_for:?} paused, {running_rate} running",
            c2 - c1
        ));
    }
    if c3 <= c2 {
        failures.push(format!("the container does not run after resume: counter {c2} -> {c3}"));
    }
    for topic in ["/tasks/paused", "/tasks/resumed"] {
        if events.wait_for_topic(&id, topic, EVENT_WAIT).is_none() {
            failures.push(format!("no {topic} event"));
        }
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

/// A container limited to 32 MiB can allocate 4 MiB but not 64 MiB: the allocating process is
/// OOM-killed (the shell reports 128+9 = 137) and containerd hears /tasks/oom.
fn memory_limit_and_oom(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("oom", rt), rt) else { return };
    let events = env.watch_events();
    // `dd` with a 64 MiB block allocates and fills one buffer, alone: no other process of the
    // container allocates while the kernel tears the victim down. (A `head | tail` pipeline did:
    // on a cgroup v1 host `head` charged a pipe page while the killed `tail` was still releasing
    // its memory, and the kernel then killed the shell too, in about one run in six.) The hog
    // also raises its own oom_score_adj, so that the kernel picks it and never the shell.
    let script = "dd if=/dev/zero of=/dev/null bs=4M count=1 2>/dev/null && echo small-ok; \
                  (echo 1000 > /proc/self/oom_score_adj; \
                   exec dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null); \
                  echo \"status=$?\"; exit 7";
    let run = env
        .run("hog")
        .flag("--memory-limit")
        .flag(&(32 * MIB).to_string())
        .args(["sh", "-c", script]);
    let id = run.id().to_string();
    let out = run.run();
    let oom = events.wait_for_topic(&id, "/tasks/oom", EVENT_WAIT);
    let context =
        format!("{}\nevents:\n{}\nlog:\n{}", out.describe(), events.dump(), env.log_tail());
    assert!(!out.timed_out, "{context}");
    assert_eq!(
        out.stdout, "small-ok\nstatus=137\n",
        "the 64 MiB allocation must be OOM-killed: {context}"
    );
    assert_eq!(out.code, Some(7), "{context}");
    assert!(oom.is_some(), "no /tasks/oom event for {id}: {context}");

    // The same allocation as the container's init process: the task ends with 137.
    let run = env.run("hog-init").flag("--memory-limit").flag(&(32 * MIB).to_string());
    let out = run.args(["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]).run();
    assert_eq!(out.code, Some(137), "{}\nlog:\n{}", out.describe(), env.log_tail());
    events.stop();
    env.finish();
}

/// runc checkpoints with CRIU (installed here, but failing in this environment: runc reports
/// CRIU's error); Bazaar cannot checkpoint a VM and must say so with the "not implemented"
/// status. Either way the container runs on.
fn checkpoint_not_implemented(rt: Runtime) {
    let Some(env) = TestEnv::start(&name("checkpoint", rt), rt) else { return };
    let id = env.start_detached(env.run("sleeper").args(["sleep", "600"]).detach());
    let out = env.ctr_timeout(&["tasks", "checkpoint", &id], Duration::from_secs(60));
    match rt {
        Runtime::Runc => {
            // What runc gives, for the record: success with a working CRIU, else CRIU's error.
            if !out.success() {
                assert!(
                    out.stderr.contains("criu"),
                    "runc's checkpoint failed otherwise: {}",
                    out.describe()
                );
                assert!(!out.stderr.contains("not implemented"), "{}", out.describe());
            }
        }
        Runtime::Bazaar => {
            assert!(!out.success(), "checkpoint cannot succeed: {}", out.describe());
            assert!(
                out.stderr.trim_end().ends_with(": not implemented"),
                "the error must carry the NotImplemented status: {}\nlog:\n{}",
                out.describe(),
                env.log_tail()
            );
            assert!(
                out.stderr.contains("checkpoint"),
                "the error must name the cause: {}",
                out.describe()
            );
        }
    }
    assert_eq!(env.task_status(&id).map(|s| s.1).as_deref(), Some("RUNNING"), "{}", out.describe());
    let exec = env.exec(&id, "after").args(["echo", "alive"]).run();
    env.assert_success(&exec);
    assert_eq!(exec.stdout, "alive\n");
    env.remove_container(&id);
    env.finish();
}
