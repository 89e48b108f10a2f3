//! What a pod's and a container's CRI config asks for, under the handlers `runc` (the
//! reference) and `bazaar` (one VM per pod), checked from inside the containers: the pod's
//! hostname, DNS config and /etc/hosts; sysctls; the pod-shared PID namespace and the default
//! one per container; host namespaces (refused by Bazaar); the security context (user, groups,
//! capabilities, no_new_privs, read-only rootfs, privileged); host-path volumes.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bazaar_tests::both_runtimes;
use bazaar_tests::cri::api;
use bazaar_tests::cri::pods::Pods;
use bazaar_tests::cri::setup::handler;
use bazaar_tests::fixture::{Runtime, TestEnv};

both_runtimes!(pod_settings, host_namespaces, security_context, volumes);

fn namespace_options(config: &mut api::PodSandboxConfig) -> &mut api::NamespaceOption {
    let linux = config.linux.get_or_insert_with(Default::default);
    let security = linux.security_context.get_or_insert_with(Default::default);
    security.namespace_options.get_or_insert_with(Default::default)
}

/// The value of field `key` (e.g. `CapEff`) in /proc/self/status text.
fn status_field<'t>(status: &'t str, key: &str) -> &'t str {
    let prefix = format!("{key}:");
    let line = status.lines().find(|l| l.starts_with(&prefix));
    line.map(|l| l[prefix.len()..].trim()).unwrap_or_else(|| panic!("no {key} in {status}"))
}

fn cap_set(hex: &str) -> u64 {
    u64::from_str_radix(hex, 16).unwrap_or_else(|err| panic!("capability set {hex:?}: {err}"))
}

const CAP_CHOWN: u32 = 0;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// A container `sleep <seconds>` whose PID namespace is `mode` (the kubelet repeats the pod's
/// PID mode in each container's config; CRI's default, 0, is POD).
fn with_pid_mode(
    pods: &Pods<'_>,
    name: &str,
    seconds: u32,
    mode: api::NamespaceMode,
) -> api::ContainerConfig {
    let mut config = pods.container_config(name, &["sleep", &seconds.to_string()]);
    let options = api::NamespaceOption { pid: mode as i32, ..Default::default() };
    config.linux.as_mut().unwrap().security_context = Some(api::LinuxContainerSecurityContext {
        namespace_options: Some(options),
        ..Default::default()
    });
    config
}

/// Hostname, DNS config, /etc/hosts, sysctls (namespaced: IPC and network, "safe" and not)
/// and a pod-wide PID namespace; then a second pod with the default PID namespace per container.
fn pod_settings(rt: Runtime) {
    let name = format!("e2e_cri_settings-pod-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();

    let mut config = pods.pod_config("shared");
    config.hostname = "pod-host-name".to_string();
    config.dns_config = Some(api::DnsConfig {
        servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
        searches: vec!["bazaar.svc.cluster.local".into(), "cluster.local".into()],
        options: vec!["ndots:5".into(), "timeout:2".into()],
    });
    let sysctls = HashMap::from([
        ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
        ("net.ipv4.ip_unprivileged_port_start".to_string(), "81".to_string()),
        // Not in the kubelet's "safe" set; containerd applies it all the same.
        ("kernel.msgmax".to_string(), "12345".to_string()),
    ]);
    config.linux.as_mut().unwrap().sysctls = sysctls.clone();
    namespace_options(&mut config).pid = api::NamespaceMode::Pod as i32;
    let pod = pods.try_run_pod(config, handler(rt)).unwrap_or_else(|err| panic!("{err:#}"));

    let a =
        pods.start_new_container(&pod, with_pid_mode(&pods, "a", 1001, api::NamespaceMode::Pod));
    let b =
        pods.start_new_container(&pod, with_pid_mode(&pods, "b", 1002, api::NamespaceMode::Pod));

    for id in [&a, &b] {
        assert_eq!(pods.exec_ok(id, &["hostname"]), "pod-host-name\n");
        let resolv = pods.exec_ok(id, &["cat", "/etc/resolv.conf"]);
        let lines: Vec<&str> = resolv.lines().collect();
        for expected in [
            "nameserver 10.96.0.10",
            "nameserver 10.96.0.11",
            "search bazaar.svc.cluster.local cluster.local",
            "options ndots:5 timeout:2",
        ] {
            assert!(lines.contains(&expected), "/etc/resolv.conf lacks {expected:?}:\n{resolv}");
        }
        for (key, value) in &sysctls {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            assert_eq!(pods.exec_ok(id, &["cat", &path]).trim(), value, "{key} in {id}");
        }
    }
    // /etc/hosts is the pod's one file: an entry added by one container is seen by the other.
    let hosts = pods.exec_ok(&a, &["cat", "/etc/hosts"]);
    assert!(hosts.lines().any(|l| l.contains("localhost")), "/etc/hosts: {hosts}");
    pods.exec_ok(&a, &["sh", "-c", "echo '10.1.2.3 added-by-a' >> /etc/hosts"]);
    assert!(pods.exec_ok(&b, &["cat", "/etc/hosts"]).contains("10.1.2.3 added-by-a"));

    // The pod shares one PID namespace: each container sees the other's process.
    let (ps_a, ps_b) =
        (pods.exec_ok(&a, &["ps", "-o", "args"]), pods.exec_ok(&b, &["ps", "-o", "args"]));
    assert!(ps_a.contains("sleep 1002"), "a does not see b's process:\n{ps_a}");
    assert!(ps_b.contains("sleep 1001"), "b does not see a's process:\n{ps_b}");
    // Its PID 1 is the pause container's process (the pause image runs `sleep infinity`), and
    // nothing outside the pod shows (under Bazaar: not the guest agent).
    let pids = pods.exec_ok(&a, &["ps", "-o", "pid,args"]);
    let first = pids.lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(first, Some(vec!["1", "/bin/sleep", "infinity"]), "PID 1 of the pod:\n{pids}");
    assert!(!pids.contains("bazaar-agent") && !pids.contains("/init"), "{pids}");
    pods.stop_pod(&pod.id);
    pods.remove_pod(&pod.id);

    // The kubelet's default (shareProcessNamespace unset): a PID namespace per container, where the container's command is
    // PID 1 and nothing of the other container shows.
    let pod = pods.run_pod("apart", handler(rt));
    let c = pods
        .start_new_container(&pod, with_pid_mode(&pods, "c", 1003, api::NamespaceMode::Container));
    let d = pods
        .start_new_container(&pod, with_pid_mode(&pods, "d", 1004, api::NamespaceMode::Container));
    let ps_c = pods.exec_ok(&c, &["ps", "-o", "pid,args"]);
    assert!(!ps_c.contains("sleep 1004"), "c sees d's process:\n{ps_c}");
    let ps_d = pods.exec_ok(&d, &["ps", "-o", "args"]);
    assert!(!ps_d.contains("sleep 1003"), "d sees c's process:\n{ps_d}");
    let first = ps_c.lines().nth(1).unwrap_or_default().split_whitespace().collect::<Vec<_>>();
    assert_eq!(first, ["1", "sleep", "1003"], "c's PID 1:\n{ps_c}");
    pods.stop_pod(&pod.id);
    pods.remove_pod(&pod.id);
    drop(pods);
    env.finish();
}

/// `NamespaceMode::Node` for the network, PID or IPC namespace: runc puts the pod in the host's;
/// a Bazaar pod is a VM, which cannot share them, so RunPodSandbox fails and says why.
fn host_namespaces(rt: Runtime) {
    let name = format!("e2e_cri_settings-hostns-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let host_ns = |ns: &str| std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
    for (kind, ns) in [("network", "net"), ("pid", "pid"), ("ipc", "ipc")] {
        let mut config = pods.pod_config(&format!("host-{ns}"));
        // The kubelet names no hostname for such pods: runc cannot set one in the host's UTS.
        config.hostname = String::new();
        let options = namespace_options(&mut config);
        match kind {
            "network" => options.network = api::NamespaceMode::Node as i32,
            "pid" => options.pid = api::NamespaceMode::Node as i32,
            _ => options.ipc = api::NamespaceMode::Node as i32,
        }
        let outcome = pods.try_run_pod(config, handler(rt));
        match rt {
            Runtime::Runc => {
                let pod = outcome.unwrap_or_else(|err| panic!("host {kind} under runc: {err:#}"));
                let c = pods.create_container(&pod, "c", &["sleep", "1000"]);
                pods.start_container(&c);
                let inside = pods.exec_ok(&c, &["readlink", &format!("/proc/self/ns/{ns}")]);
                assert_eq!(inside.trim(), host_ns(ns).to_string_lossy(), "host {kind}");
                pods.stop_pod(&pod.id);
                pods.remove_pod(&pod.id);
            }
            Runtime::Bazaar => {
                let err = format!("{:#}", outcome.expect_err("Bazaar ran a host-namespace pod"));
                assert!(
                    err.contains(&format!("host's {kind} namespace")) && err.contains("VM"),
                    "the refusal does not name the problem: {err}"
                );
            }
        }
    }
    assert!(pods.list_pods().is_empty(), "a refused pod was left: {:?}", pods.list_pods());
    drop(pods);
    env.finish();
}

/// The container security context: user, group and supplemental groups; added and dropped
/// capabilities, no_new_privs and a read-only rootfs; a privileged container.
fn security_context(rt: Runtime) {
    let name = format!("e2e_cri_settings-security-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let mut config = pods.pod_config("secure");
    // A pod may hold privileged containers only if the pod itself is privileged.
    let linux = config.linux.as_mut().unwrap();
    linux.security_context.as_mut().unwrap().privileged = true;
    let pod = pods.try_run_pod(config, handler(rt)).unwrap_or_else(|err| panic!("{err:#}"));

    let mut user = pods.container_config("user", &["sleep", "1000"]);
    user.linux.as_mut().unwrap().security_context = Some(api::LinuxContainerSecurityContext {
        run_as_user: Some(api::Int64Value { value: 1234 }),
        run_as_group: Some(api::Int64Value { value: 2345 }),
        supplemental_groups: vec![3456, 4567],
        ..Default::default()
    });
    let user = pods.start_new_container(&pod, user);
    let status = pods.exec_ok(&user, &["cat", "/proc/self/status"]);
    assert_eq!(status_field(&status, "Uid"), "1234\t1234\t1234\t1234");
    assert_eq!(status_field(&status, "Gid"), "2345\t2345\t2345\t2345");
    let mut groups: Vec<&str> = status_field(&status, "Groups").split_whitespace().collect();
    groups.sort();
    assert_eq!(groups, ["2345", "3456", "4567"], "supplemental groups");
    assert_eq!(cap_set(status_field(&status, "CapEff")), 0, "a non-root user has no capabilities");

    let mut tight = pods.container_config("tight", &["sleep", "1000"]);
    tight.linux.as_mut().unwrap().security_context = Some(api::LinuxContainerSecurityContext {
        capabilities: Some(api::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["CHOWN".into()],
            ..Default::default()
        }),
        readonly_rootfs: true,
        no_new_privs: true,
        ..Default::default()
    });
    let tight = pods.start_new_container(&pod, tight);
    let status = pods.exec_ok(&tight, &["cat", "/proc/self/status"]);
    let caps = cap_set(status_field(&status, "CapEff"));
    assert_ne!(caps & (1 << CAP_NET_ADMIN), 0, "NET_ADMIN not added: {caps:#x}");
    assert_eq!(caps & (1 << CAP_CHOWN), 0, "CHOWN not dropped: {caps:#x}");
    assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0, "SYS_ADMIN is not a default: {caps:#x}");
    assert_eq!(cap_set(status_field(&status, "CapBnd")), caps, "bounding set");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    let (code, _, err) = pods.sh(&tight, "touch /new-file");
    assert_ne!(code, 0, "wrote to a read-only rootfs");
    assert!(err.contains("Read-only file system"), "{err}");
    let (code, _, err) = pods.sh(&tight, "chown 1:1 /dev/null");
    assert_ne!(code, 0, "chown without CAP_CHOWN: {err}");

    // Privileged: every capability, no seccomp.
    let mut privileged = pods.container_config("privileged", &["sleep", "1000"]);
    privileged.linux.as_mut().unwrap().security_context =
        Some(api::LinuxContainerSecurityContext { privileged: true, ..Default::default() });
    let privileged = pods.start_new_container(&pod, privileged);
    let status = pods.exec_ok(&privileged, &["cat", "/proc/self/status"]);
    let last_cap = pods.exec_ok(&privileged, &["cat", "/proc/sys/kernel/cap_last_cap"]);
    let last_cap: u32 = last_cap.trim().parse().unwrap();
    let all = (1u64 << (last_cap + 1)) - 1;
    // containerd lists in the spec the capabilities it holds itself (these machines lack
    // CAP_SYS_RESOURCE), and both runtimes grant exactly the spec's.
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let expected = all & cap_set(status_field(&ours, "CapBnd"));
    assert_eq!(cap_set(status_field(&status, "CapEff")), expected, "privileged capabilities");
    // No seccomp profile: none under runc; under Bazaar only the agent's vsock guard, a filter
    // of its own (`agent/src/container/seccomp`), so the mode reads "filter".
    let seccomp = if rt == Runtime::Bazaar { "2" } else { "0" };
    assert_eq!(status_field(&status, "Seccomp"), seccomp, "a privileged container's seccomp");
    // It may mount (CAP_SYS_ADMIN, no seccomp filter); the unprivileged one may not.
    let tmpfs = "mount -t tmpfs none /tmp && echo mounted";
    assert_eq!(pods.sh(&privileged, tmpfs).1, "mounted\n", "a privileged container mounts");
    assert_ne!(pods.sh(&tight, tmpfs).0, 0, "an unprivileged container mounted");

    pods.stop_pod(&pod.id);
    pods.remove_pod(&pod.id);
    drop(pods);
    env.finish();
}

fn mount(host: &Path, container: &str, readonly: bool) -> api::Mount {
    api::Mount {
        host_path: host.to_string_lossy().into_owned(),
        container_path: container.to_string(),
        readonly,
        ..Default::default()
    }
}

/// Host-path volumes: read-write (writes both ways), read-only (EROFS), a host path that is a
/// symlink (the target is mounted), and an emptyDir-like directory two containers share.
fn volumes(rt: Runtime) {
    let name = format!("e2e_cri_settings-volumes-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let root = env.containerd().dir().join("volumes");
    let (rw, ro, target, empty) =
        (root.join("rw"), root.join("ro"), root.join("target"), root.join("empty-dir"));
    for dir in [&rw, &ro, &target, &empty] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(rw.join("from-host"), "host wrote this\n").unwrap();
    std::fs::write(ro.join("from-host"), "read only\n").unwrap();
    std::fs::write(target.join("through-link"), "via the symlink\n").unwrap();
    let link = root.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let pod = pods.run_pod("volumes", handler(rt));
    let mut a = pods.container_config("a", &["sleep", "1000"]);
    a.mounts = vec![
        mount(&rw, "/data/rw", false),
        mount(&ro, "/data/ro", true),
        mount(&link, "/data/link", false),
        mount(&empty, "/cache", false),
    ];
    let a = pods.start_new_container(&pod, a);
    let mut b = pods.container_config("b", &["sleep", "1000"]);
    b.mounts = vec![mount(&empty, "/cache", false)];
    let b = pods.start_new_container(&pod, b);

    assert_eq!(pods.exec_ok(&a, &["cat", "/data/rw/from-host"]), "host wrote this\n");
    pods.exec_ok(&a, &["sh", "-c", "echo container wrote this > /data/rw/from-container"]);
    let back = std::fs::read_to_string(rw.join("from-container")).unwrap_or_default();
    assert_eq!(back, "container wrote this\n");
    // A host change to a file the container already read: at once under runc; under Bazaar
    // once virtio-fs's cached attributes time out (virtiofsd --cache=auto: 1 s).
    std::fs::write(rw.join("from-host"), "host changed this\n").unwrap();
    let changed = Instant::now();
    while pods.exec_ok(&a, &["cat", "/data/rw/from-host"]) != "host changed this\n" {
        assert!(rt == Runtime::Bazaar, "runc showed a stale file");
        assert!(changed.elapsed() < Duration::from_secs(5), "the host's change never showed");
        std::thread::sleep(Duration::from_millis(250));
    }

    assert_eq!(pods.exec_ok(&a, &["cat", "/data/ro/from-host"]), "read only\n");
    let (code, _, err) = pods.sh(&a, "echo x > /data/ro/new");
    assert_ne!(code, 0, "wrote to a read-only volume");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!ro.join("new").exists());

    assert_eq!(pods.exec_ok(&a, &["cat", "/data/link/through-link"]), "via the symlink\n");
    pods.exec_ok(&a, &["sh", "-c", "echo back > /data/link/written"]);
    assert_eq!(std::fs::read_to_string(target.join("written")).unwrap_or_default(), "back\n");

    // The emptyDir-like directory: what one container writes, the other reads, and the host.
    pods.exec_ok(&a, &["sh", "-c", "echo shared > /cache/note"]);
    assert_eq!(pods.exec_ok(&b, &["cat", "/cache/note"]), "shared\n");
    assert_eq!(std::fs::read_to_string(empty.join("note")).unwrap_or_default(), "shared\n");

    pods.stop_pod(&pod.id);
    pods.remove_pod(&pod.id);
    drop(pods);
    std::fs::remove_dir_all(&root).unwrap();
    env.finish();
}
