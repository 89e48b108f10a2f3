//! Pods through CRI for the e2e tests: [`CriEnv`] is the CRI part of a [`TestEnv`] (settings,
//! images, teardown), [`Pods`] the calls a test makes, kubelet-style, each with a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::api;
use super::client::CriClient;
use super::netleaks::{NetLeaks, NetSnapshot};
use super::setup::CriSettings;
use crate::containerd::PrivateContainerd;
use crate::fixture::TestEnv;
use crate::image;
use crate::leaks::CGROUP_ROOT;

/// Deadline of a CRI call that may boot a VM under TCG (RunPodSandbox, the first container).
pub const SLOW_CALL: Duration = Duration::from_secs(180);
/// Deadline of the other calls.
pub const CALL: Duration = Duration::from_secs(60);

/// What a CRI-enabled [`TestEnv`] keeps for teardown.
pub struct CriEnv {
    pub settings: CriSettings,
    /// Where pods' container logs go (`PodSandboxConfig.log_directory`).
    pub log_root: PathBuf,
    /// The cgroup parent of every pod (`/<token>-pods`): runc creates it on the host and
    /// leaves it; teardown removes it.
    pub cgroup_parent: String,
    net_before: NetSnapshot,
}

impl CriEnv {
    pub fn new(dir: &Path, token: &str) -> CriEnv {
        CriEnv {
            settings: CriSettings::for_test(dir, token),
            log_root: dir.join("pod-logs"),
            cgroup_parent: format!("/{token}-pods"),
            net_before: NetSnapshot::take(),
        }
    }

    pub fn connect(&self, containerd: &PrivateContainerd) -> Result<CriClient> {
        CriClient::connect(&containerd.socket())
    }

    /// Imports the images into the CRI plugin's namespace and waits until the plugin lists
    /// them (it learns of imports from containerd's events).
    pub fn import_images(&self, containerd: &PrivateContainerd, tarball: &Path) -> Result<()> {
        image::import_into(containerd, super::NAMESPACE, tarball)?;
        let client = self.connect(containerd)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for name in image::ALL_IMAGES {
            loop {
                let request = api::ImageStatusRequest {
                    image: Some(api::ImageSpec { image: name.to_string(), ..Default::default() }),
                    verbose: false,
                };
                let mut images = client.image_service();
                let status = client.call("ImageStatus", CALL, images.image_status(request))?;
                if status.image.is_some() {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the CRI plugin does not list the imported image {name}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Stops and removes every pod still there (a leak in itself); returns their ids.
    pub fn remove_all_pods(&self, containerd: &PrivateContainerd) -> Vec<String> {
        let Ok(client) = self.connect(containerd) else { return Vec::new() };
        let mut rs = client.runtime_service();
        let request = api::ListPodSandboxRequest { filter: None };
        let Ok(list) = client.call("ListPodSandbox", CALL, rs.list_pod_sandbox(request)) else {
            return Vec::new();
        };
        let ids: Vec<String> = list.items.into_iter().map(|pod| pod.id).collect();
        for id in &ids {
            let stop = api::StopPodSandboxRequest { pod_sandbox_id: id.clone() };
            if let Err(err) = client.call("StopPodSandbox", SLOW_CALL, rs.stop_pod_sandbox(stop)) {
                eprintln!("bazaar-tests: {err:#}");
            }
            let remove = api::RemovePodSandboxRequest { pod_sandbox_id: id.clone() };
            if let Err(err) = client.call("RemovePodSandbox", CALL, rs.remove_pod_sandbox(remove)) {
                eprintln!("bazaar-tests: {err:#}");
            }
        }
        ids.into_iter().map(|id| format!("pod {id}")).collect()
    }

    /// After containerd stopped: removes the test's bridge and cgroup parent (made by the test,
    /// so not leaks), then reports pod namespaces and interfaces still there (and removes them).
    pub fn after_containerd_stopped(&self, grace: Duration) -> Vec<String> {
        self.settings.network.remove_bridge();
        let mut found = Vec::new();
        for dir in cgroup_parent_dirs(&self.cgroup_parent) {
            // rmdir works on an empty cgroup only: a pod's cgroup left inside is a leak.
            if let Err(err) = std::fs::remove_dir(&dir) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    found.push(format!("cgroup {} could not be removed: {err}", dir.display()));
                }
            }
        }
        let start = std::time::Instant::now();
        let mut leaks = self.net_before.new_since();
        while !leaks.is_empty() && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(200));
            leaks = self.net_before.new_since();
        }
        if leaks != NetLeaks::default() {
            found.extend(leaks.describe());
            NetSnapshot::clean_up(&leaks);
        }
        found
    }
}

/// `<hierarchy>/<parent>` in every mounted cgroup hierarchy (and a pure v2 root).
fn cgroup_parent_dirs(parent: &str) -> Vec<PathBuf> {
    let relative = parent.trim_start_matches('/');
    let root = Path::new(CGROUP_ROOT);
    let mut dirs = vec![root.join(relative)];
    if let Ok(rd) = std::fs::read_dir(root) {
        for entry in rd.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path().join(relative));
            }
        }
    }
    dirs.into_iter().filter(|d| d.exists()).collect()
}

/// The calls of one test, kubelet-style. Panics (fails the test) on errors, with containerd's
/// log, except where a method returns a `Result`.
pub struct Pods<'a> {
    pub(super) env: &'a TestEnv,
    pub(super) cri: &'a CriEnv,
    pub(super) client: CriClient,
}

/// A pod as the test created it: its id and the config every container call repeats.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: api::PodSandboxConfig,
}

impl<'a> Pods<'a> {
    pub fn new(env: &'a TestEnv, cri: &'a CriEnv, client: CriClient) -> Pods<'a> {
        Pods { env, cri, client }
    }

    pub fn client(&self) -> &CriClient {
        &self.client
    }

    /// The test's CNI network (its bridge and subnet).
    pub fn network(&self) -> &crate::cri::setup::CniNetwork {
        &self.cri.settings.network
    }

    #[track_caller]
    pub(super) fn ok<T>(&self, result: Result<T>) -> T {
        match result {
            Ok(value) => value,
            Err(err) => panic!("{err:#}\nend of containerd's log:\n{}", self.env.log_tail()),
        }
    }

    /// The config of pod `name`: own UTS/IPC/network namespaces (POD), a PID namespace per
    /// container (the kubelet's default), the test's cgroup parent and log directory.
    pub fn pod_config(&self, name: &str) -> api::PodSandboxConfig {
        let log_directory = self.cri.log_root.join(name);
        let namespaces = api::NamespaceOption {
            network: api::NamespaceMode::Pod as i32,
            pid: api::NamespaceMode::Container as i32,
            ipc: api::NamespaceMode::Pod as i32,
            ..Default::default()
        };
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{}-{name}", self.env.token()),
                namespace: "bazaar-tests".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: self.cri.cgroup_parent.clone(),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with runtime handler `handler`.
    #[track_caller]
    pub fn run_pod(&self, name: &str, handler: &str) -> Pod {
        self.ok(self.try_run_pod(self.pod_config(name), handler))
    }

    /// CreateContainer of the busybox image running `command`, logging to `<name>.log`.
    #[track_caller]
    pub fn create_container(&self, pod: &Pod, name: &str, command: &[&str]) -> String {
        self.ok(self.try_create_container(pod, self.container_config(name, command)))
    }

    #[track_caller]
    pub fn start_container(&self, id: &str) {
        let request = api::StartContainerRequest { container_id: id.to_string() };
        let mut rs = self.client.runtime_service();
        self.ok(self.client.call("StartContainer", SLOW_CALL, rs.start_container(request)));
    }

    /// StopContainer: SIGTERM (the image's stop signal), SIGKILL after `timeout_secs`.
    #[track_caller]
    pub fn stop_container(&self, id: &str, timeout_secs: i64) {
        let request =
            api::StopContainerRequest { container_id: id.to_string(), timeout: timeout_secs };
        let mut rs = self.client.runtime_service();
        let deadline = CALL + Duration::from_secs(timeout_secs.max(0) as u64);
        self.ok(self.client.call("StopContainer", deadline, rs.stop_container(request)));
    }

    #[track_caller]
    pub fn remove_container(&self, id: &str) {
        let request = api::RemoveContainerRequest { container_id: id.to_string() };
        let mut rs = self.client.runtime_service();
        self.ok(self.client.call("RemoveContainer", CALL, rs.remove_container(request)));
    }

    /// Polls ContainerStatus until the container is in `state`; fails the test otherwise.
    #[track_caller]
    pub fn wait_for_state(
        &self,
        id: &str,
        state: api::ContainerState,
        timeout: Duration,
    ) -> api::ContainerStatus {
        let start = std::time::Instant::now();
        loop {
            let status = self.container_status(id);
            if status.state == state as i32 {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "container {id} not {state:?} after {timeout:?}: {status:?}\n{}",
                self.env.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// ExecSync with CRI's own `timeout` (seconds, 0 = none); the call's deadline is longer.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<api::ExecSyncResponse> {
        let request = api::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        let mut rs = self.client.runtime_service();
        let deadline = CALL + Duration::from_secs(timeout_secs.max(0) as u64);
        self.client.call("ExecSync", deadline, rs.exec_sync(request))
    }

    /// ExecSync that must succeed (exit code 0, within 60 s); returns stdout.
    #[track_caller]
    pub fn exec_ok(&self, id: &str, cmd: &[&str]) -> String {
        let reply =
            self.ok(self.exec_sync(id, cmd, 60).with_context(|| format!("ExecSync {cmd:?}")));
        let stdout = String::from_utf8_lossy(&reply.stdout).into_owned();
        assert_eq!(
            reply.exit_code,
            0,
            "ExecSync {cmd:?}: stdout {stdout:?} stderr {:?}\nend of containerd's log:\n{}",
            String::from_utf8_lossy(&reply.stderr),
            self.env.log_tail()
        );
        stdout
    }

    #[track_caller]
    pub fn container_status(&self, id: &str) -> api::ContainerStatus {
        let request = api::ContainerStatusRequest { container_id: id.to_string(), verbose: false };
        let mut rs = self.client.runtime_service();
        let reply =
            self.ok(self.client.call("ContainerStatus", CALL, rs.container_status(request)));
        self.ok(reply.status.context("ContainerStatus returned no status"))
    }

    #[track_caller]
    pub fn pod_status(&self, id: &str) -> api::PodSandboxStatus {
        let request =
            api::PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose: false };
        let mut rs = self.client.runtime_service();
        let reply =
            self.ok(self.client.call("PodSandboxStatus", CALL, rs.pod_sandbox_status(request)));
        self.ok(reply.status.context("PodSandboxStatus returned no status"))
    }

    /// ContainerStats: CPU and memory as the kubelet reads them.
    #[track_caller]
    pub fn container_stats(&self, id: &str) -> api::ContainerStats {
        let request = api::ContainerStatsRequest { container_id: id.to_string() };
        let mut rs = self.client.runtime_service();
        let reply = self.ok(self.client.call("ContainerStats", CALL, rs.container_stats(request)));
        self.ok(reply.stats.context("ContainerStats returned no stats"))
    }

    /// ListContainerStats of pod `pod_id`.
    #[track_caller]
    pub fn list_container_stats(&self, pod_id: &str) -> Vec<api::ContainerStats> {
        let filter =
            api::ContainerStatsFilter { pod_sandbox_id: pod_id.to_string(), ..Default::default() };
        let request = api::ListContainerStatsRequest { filter: Some(filter) };
        let mut rs = self.client.runtime_service();
        let reply =
            self.ok(self.client.call("ListContainerStats", CALL, rs.list_container_stats(request)));
        reply.stats
    }

    /// ListContainers of pod `pod_id`.
    #[track_caller]
    pub fn list_containers(&self, pod_id: &str) -> Vec<api::Container> {
        let filter =
            api::ContainerFilter { pod_sandbox_id: pod_id.to_string(), ..Default::default() };
        let request = api::ListContainersRequest { filter: Some(filter) };
        let mut rs = self.client.runtime_service();
        self.ok(self.client.call("ListContainers", CALL, rs.list_containers(request))).containers
    }

    #[track_caller]
    pub fn stop_pod(&self, id: &str) {
        let request = api::StopPodSandboxRequest { pod_sandbox_id: id.to_string() };
        let mut rs = self.client.runtime_service();
        self.ok(self.client.call("StopPodSandbox", SLOW_CALL, rs.stop_pod_sandbox(request)));
    }

    #[track_caller]
    pub fn remove_pod(&self, id: &str) {
        let request = api::RemovePodSandboxRequest { pod_sandbox_id: id.to_string() };
        let mut rs = self.client.runtime_service();
        self.ok(self.client.call("RemovePodSandbox", CALL, rs.remove_pod_sandbox(request)));
    }

    /// ListPodSandbox: every pod's id.
    #[track_caller]
    pub fn list_pods(&self) -> Vec<String> {
        let request = api::ListPodSandboxRequest { filter: None };
        let mut rs = self.client.runtime_service();
        let reply = self.ok(self.client.call("ListPodSandbox", CALL, rs.list_pod_sandbox(request)));
        reply.items.into_iter().map(|pod| pod.id).collect()
    }
}

/// Live processes whose command line holds `pattern` and whose command line or environment
/// holds `token` (containerd passes the test's `BAZAAR_CONFIG` or socket path on to shims, and
/// shims to QEMU): how a test counts the shims and VMs of its pods.
pub fn processes_of_test(token: &str, pattern: &str) -> Vec<crate::leaks::ProcInfo> {
    crate::leaks::processes()
        .into_iter()
        .filter(|p| !p.zombie && p.cmdline.contains(pattern))
        .filter(|p| {
            p.cmdline.contains(token)
                || std::fs::read(format!("/proc/{}/environ", p.pid))
                    .is_ok_and(|env| String::from_utf8_lossy(&env).contains(token))
        })
        .collect()
}
