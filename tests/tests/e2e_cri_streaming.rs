//! The kubelet's views of running containers, under the handlers `runc` (the reference) and
//! `bazaar`: resource stats (ContainerStats, ListContainerStats, PodSandboxStats), log rotation
//! (ReopenContainerLog), and the streaming calls through containerd's streaming server: Exec
//! (output, exit status, stdin), Attach to a container started with stdin, and PortForward.

use std::time::{Duration, Instant};

use bazaar_tests::both_runtimes;
use bazaar_tests::cri::api;
use bazaar_tests::cri::pods::Pods;
use bazaar_tests::cri::setup::handler;
use bazaar_tests::cri::stream::Stream;
use bazaar_tests::fixture::{Runtime, TestEnv};

both_runtimes!(stats, log_reopen, exec_and_attach, port_forward);

const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// CPU time in nanoseconds and working set in bytes, as ContainerStats reports them.
fn figures(stats: &api::ContainerStats) -> (u64, u64) {
    let cpu = stats.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref());
    let memory = stats.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref());
    (cpu.map_or(0, |v| v.value), memory.map_or(0, |v| v.value))
}

/// A busy container's CPU time grows and its memory figure is nonzero, per container, in the
/// pod's list, and (containerd 1.6 has PodSandboxStats) for the pod.
fn stats(rt: Runtime) {
    let name = format!("e2e_cri_streaming-stats-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let pod = pods.run_pod("stats", handler(rt));
    let busy = pods.create_container(&pod, "busy", &["sh", "-c", "while :; do :; done"]);
    let idle = pods.create_container(&pod, "idle", &["sleep", "1000"]);
    pods.start_container(&busy);
    pods.start_container(&idle);

    std::thread::sleep(Duration::from_secs(1));
    let (cpu1, memory) = figures(&pods.container_stats(&busy));
    assert!(memory > 0, "no working set for the busy container");
    std::thread::sleep(Duration::from_secs(2));
    let (cpu2, _) = figures(&pods.container_stats(&busy));
    // At least a tenth of a CPU over two seconds: a busy loop, even on a loaded 2-core machine.
    assert!(cpu2 > cpu1 + 200_000_000, "the busy container's CPU time: {cpu1} then {cpu2}");

    let listed = pods.list_container_stats(&pod.id);
    assert_eq!(listed.len(), 2, "{listed:?}");
    for entry in &listed {
        let id = entry.attributes.as_ref().map(|a| a.id.clone()).unwrap_or_default();
        let (cpu, memory) = figures(entry);
        assert!(memory > 0, "no working set for {id}");
        if id == busy {
            assert!(cpu >= cpu2, "the listed CPU time went back: {cpu} < {cpu2}");
        }
    }

    match pods.pod_stats(&pod.id) {
        Ok(stats) => {
            let linux = stats.linux.unwrap_or_default();
            let cpu = linux.cpu.and_then(|c| c.usage_core_nano_seconds).map_or(0, |v| v.value);
            let memory = linux.memory.and_then(|m| m.working_set_bytes).map_or(0, |v| v.value);
            assert!(cpu >= cpu2 && memory > 0, "pod figures: cpu {cpu} memory {memory}");
        }
        Err(err) => panic!("PodSandboxStats under {rt:?}: {err:#}"),
    }

    pods.stop_pod(&pod.id);
    pods.remove_pod(&pod.id);
    drop(pods);
    env.finish();
}

/// The numbers `line-<n>` in CRI log text.
fn line_numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.rsplit(" F line-").next().filter(|_| l.contains(" F line-")))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The kubelet's log rotation: rename the file, ReopenContainerLog, and the container's next
/// lines go to a new file at the old path; the renamed one stops growing.
fn log_reopen(rt: Runtime) {
    let name = format!("e2e_cri_streaming-logs-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let pod = pods.run_pod("logs", handler(rt));
    let script = "i=0; while :; do i=$((i+1)); echo line-$i; sleep 0.2; done";
    let c = pods.create_container(&pod, "counter", &["sh", "-c", script]);
    pods.start_container(&c);
    let path = std::path::PathBuf::from(pods.container_status(&c).log_path);
    pods.wait_for_file_line(&path, " F line-3", Duration::from_secs(30));

    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    pods.reopen_container_log(&c);
    assert!(path.exists(), "ReopenContainerLog made no new file at {}", path.display());
    let before = line_numbers(&std::fs::read_to_string(&rotated).unwrap());
    let last_old = *before.last().expect("lines before the rotation");
    let deadline = Instant::now() + Duration::from_secs(30);
    let fresh = loop {
        let numbers = line_numbers(&std::fs::read_to_string(&path).unwrap_or_default());
        if numbers.len() >= 3 {
            break numbers;
        }
        assert!(Instant::now() < deadline, "no new lines in the reopened log: {numbers:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(fresh[0] > last_old, "the new file starts at line {} ≤ {last_old}", fresh[0]);
    let after = line_numbers(&std::fs::read_to_string(&rotated).unwrap());
    let last_rotated = *after.last().unwrap();
    assert!(last_rotated < fresh[0], "the rotated file still grows: {last_rotated}");
    // Consecutive: nothing lost between the two files.
    assert_eq!(fresh[0], last_rotated + 1, "lines lost across the rotation");

    pods.stop_pod(&pod.id);
    pods.remove_pod(&pod.id);
    drop(pods);
    env.finish();
}

/// Exec over the streaming server: both streams and the exit status, success and failure, and
/// stdin; Attach to a container reading its stdin.
fn exec_and_attach(rt: Runtime) {
    let name = format!("e2e_cri_streaming-exec-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let pod = pods.run_pod("stream", handler(rt));
    let mut config = pods.container_config(
        "reader",
        &["sh", "-c", "while read l; do echo got:$l; echo err:$l >&2; done"],
    );
    config.stdin = true;
    let reader = pods.start_new_container(&pod, config);

    let run = |cmd: &[&str], stdin: Option<&[u8]>| {
        let url = pods.exec_url(&reader, cmd, stdin.is_some());
        let mut stream = Stream::open(&url, "").unwrap_or_else(|err| panic!("{err:#}"));
        if let Some(data) = stdin {
            stream.send_stdin(data).unwrap();
        }
        stream.read_to_end(STREAM_TIMEOUT).unwrap_or_else(|err| panic!("exec {cmd:?}: {err:#}"))
    };
    let out = run(&["sh", "-c", "echo out; echo err >&2; exit 3"], None);
    assert_eq!((out.stdout().as_str(), out.stderr().as_str()), ("out\n", "err\n"));
    assert_eq!(out.exit_code().unwrap(), 3, "status {}", out.error());
    let out = run(&["hostname"], None);
    assert_eq!((out.stdout().as_str(), out.exit_code().unwrap()), ("stream\n", 0));
    let out = run(&["head", "-c", "12"], Some(b"from stdin\n!"));
    assert_eq!(out.stdout(), "from stdin\n!");
    assert_eq!(out.exit_code().unwrap(), 0, "status {}", out.error());

    // Attach: what we write reaches the container's stdin, its answers come back on both
    // streams; detaching leaves it running.
    let url = pods.attach_url(&reader);
    let mut attached = Stream::open(&url, "").unwrap_or_else(|err| panic!("{err:#}"));
    attached.send_stdin(b"ping\n").unwrap();
    attached
        .read_until(STREAM_TIMEOUT, |o| {
            o.stdout().contains("got:ping") && o.stderr().contains("err:ping")
        })
        .unwrap_or_else(|err| panic!("attach: {err:#}\n{}", env.log_tail()));
    attached.close();
    let status = pods.container_status(&reader);
    assert_eq!(status.state, api::ContainerState::ContainerRunning as i32, "{status:?}");

    pods.stop_pod(&pod.id);
    pods.remove_pod(&pod.id);
    drop(pods);
    env.finish();
}

/// Port-forward's two channels for one port: (data, error), each without the port number the
/// server opens it with.
fn port_channels(stream: &Stream) -> (Vec<u8>, String) {
    let strip = |bytes: &[u8]| bytes.get(2..).unwrap_or_default().to_vec();
    let data = strip(&stream.output.channels[0]);
    (data, String::from_utf8_lossy(&strip(&stream.output.channels[1])).into_owned())
}

const HTTP_PORT: i32 = 8080;

/// One HTTP request through PortForward: the response, or the error channel's message.
fn fetch_through_port_forward(pods: &Pods<'_>, pod_id: &str) -> Result<String, String> {
    fetch_through_port_forward_to(pods, pod_id, HTTP_PORT)
}

fn fetch_through_port_forward_to(
    pods: &Pods<'_>,
    pod_id: &str,
    port: i32,
) -> Result<String, String> {
    let url = pods.port_forward_url(pod_id, port);
    let mut stream = Stream::open(&url, &format!("?port={port}")).map_err(|e| format!("{e:#}"))?;
    stream.send(0, b"GET /index.html HTTP/1.0\r\n\r\n").map_err(|e| format!("{e:#}"))?;
    let _ = stream.read_until(Duration::from_secs(20), |out| {
        out.closed
            || out.channels[1].len() > 2
            || String::from_utf8_lossy(&out.channels[0]).contains("hello-from-pod")
    });
    let (data, error) = port_channels(&stream);
    stream.close();
    let text = String::from_utf8_lossy(&data).into_owned();
    if text.contains("hello-from-pod") {
        Ok(text)
    } else {
        Err(format!("error channel {error:?}, data {text:?}"))
    }
}

/// PortForward: containerd dials `localhost:<port>` inside the pod's network namespace on the
/// host. Under runc the container's server listens there. Under Bazaar the server listens in
/// the guest; the runtime redirects the namespace's loopback TCP to a listener of its own that
/// forwards each connection to the same port on the guest's loopback (docs/cri.md).
fn port_forward(rt: Runtime) {
    let name = format!("e2e_cri_streaming-portfwd-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let pod = pods.run_pod("forward", handler(rt));
    let serve = format!(
        "mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html && \
         exec busybox httpd -f -p {HTTP_PORT} -h /tmp/www"
    );
    let server = pods.create_container(&pod, "httpd", &["sh", "-c", &serve]);
    pods.start_container(&server);
    // The server is up once it answers from inside the pod.
    let probe = format!("busybox wget -q -O - http://127.0.0.1:{HTTP_PORT}/index.html");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pods.sh(&server, &probe).1 != "hello-from-pod\n" {
        assert!(Instant::now() < deadline, "httpd never answered in the pod");
        std::thread::sleep(Duration::from_millis(200));
    }

    // containerd dials localhost:<port> in the pod's host-side network namespace; under
    // Bazaar the runtime redirects that to the guest's loopback (docs/cri.md).
    let response = fetch_through_port_forward(&pods, &pod.id)
        .unwrap_or_else(|err| panic!("port-forward: {err}\n{}", env.log_tail()));
    assert!(response.starts_with("HTTP/1."), "{response}");
    assert!(response.ends_with("hello-from-pod\n"), "{response}");
    // A port nobody listens on fails instead of hanging.
    let refused = fetch_through_port_forward_to(&pods, &pod.id, HTTP_PORT + 1);
    assert!(refused.is_err(), "a forward to a closed port answered: {refused:?}");
    pods.stop_pod(&pod.id);
    pods.remove_pod(&pod.id);
    drop(pods);
    env.finish();
}
