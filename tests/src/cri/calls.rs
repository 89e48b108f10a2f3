//! The CRI calls of [`Pods`] beyond the basic lifecycle: pods and containers from a config the
//! test shaped (returning the error, so a refusal can be asserted), the streaming calls (their
//! URL, for [`super::stream`]), ReopenContainerLog and the pod's stats.

use std::time::Duration;

use anyhow::{Context, Result};

use super::api;
use super::pods::{Pod, Pods, CALL, SLOW_CALL};
use crate::image;

impl<'a> Pods<'a> {
    /// The config CreateContainer gets for the busybox image running `command`, logging to
    /// `<name>.log`; tests change it before [`Pods::try_create_container`].
    pub fn container_config(&self, name: &str, command: &[&str]) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: name.to_string(), attempt: 0 }),
            image: Some(api::ImageSpec { image: image::IMAGE.to_string(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(api::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// RunPodSandbox of `config` with runtime handler `handler`.
    pub fn try_run_pod(&self, config: api::PodSandboxConfig, handler: &str) -> Result<Pod> {
        std::fs::create_dir_all(&config.log_directory).context("creating the log dir")?;
        let request = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let mut rs = self.client.runtime_service();
        let reply = self.client.call("RunPodSandbox", SLOW_CALL, rs.run_pod_sandbox(request))?;
        self.env.track_id(&reply.pod_sandbox_id);
        Ok(Pod { id: reply.pod_sandbox_id, config })
    }

    /// CreateContainer of `config` in `pod`.
    pub fn try_create_container(&self, pod: &Pod, config: api::ContainerConfig) -> Result<String> {
        let request = api::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let mut rs = self.client.runtime_service();
        let reply = self.client.call("CreateContainer", SLOW_CALL, rs.create_container(request))?;
        self.env.track_id(&reply.container_id);
        Ok(reply.container_id)
    }

    /// CreateContainer then StartContainer of `config`; fails the test on errors.
    #[track_caller]
    pub fn start_new_container(&self, pod: &Pod, config: api::ContainerConfig) -> String {
        let id = self.ok(self.try_create_container(pod, config));
        self.start_container(&id);
        id
    }

    /// Exec's streaming URL for `cmd` in container `id`.
    #[track_caller]
    pub fn exec_url(&self, id: &str, cmd: &[&str], stdin: bool) -> String {
        let request = api::ExecRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin,
            stdout: true,
            stderr: true,
        };
        let mut rs = self.client.runtime_service();
        self.ok(self.client.call("Exec", CALL, rs.exec(request))).url
    }

    /// Attach's streaming URL for container `id` (stdin, stdout and stderr, no tty).
    #[track_caller]
    pub fn attach_url(&self, id: &str) -> String {
        let request = api::AttachRequest {
            container_id: id.to_string(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        };
        let mut rs = self.client.runtime_service();
        self.ok(self.client.call("Attach", CALL, rs.attach(request))).url
    }

    /// PortForward's streaming URL for pod `pod_id` and `port`.
    #[track_caller]
    pub fn port_forward_url(&self, pod_id: &str, port: i32) -> String {
        let request =
            api::PortForwardRequest { pod_sandbox_id: pod_id.to_string(), port: vec![port] };
        let mut rs = self.client.runtime_service();
        self.ok(self.client.call("PortForward", CALL, rs.port_forward(request))).url
    }

    /// ReopenContainerLog: the runtime reopens the container's log file (after a rotation).
    #[track_caller]
    pub fn reopen_container_log(&self, id: &str) {
        let request = api::ReopenContainerLogRequest { container_id: id.to_string() };
        let mut rs = self.client.runtime_service();
        self.ok(self.client.call("ReopenContainerLog", CALL, rs.reopen_container_log(request)));
    }

    /// PodSandboxStats of pod `pod_id`, or the CRI error.
    pub fn pod_stats(&self, pod_id: &str) -> Result<api::PodSandboxStats> {
        let request = api::PodSandboxStatsRequest { pod_sandbox_id: pod_id.to_string() };
        let mut rs = self.client.runtime_service();
        let reply = self.client.call("PodSandboxStats", CALL, rs.pod_sandbox_stats(request))?;
        reply.stats.context("PodSandboxStats returned no stats")
    }

    /// ExecSync of `sh -c script`: (exit code, stdout, stderr).
    #[track_caller]
    pub fn sh(&self, id: &str, script: &str) -> (i32, String, String) {
        let reply = self.ok(self.exec_sync(id, &["sh", "-c", script], 30));
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (reply.exit_code, text(&reply.stdout), text(&reply.stderr))
    }

    /// Waits until `path` (a file the test reads on the host) holds a line containing `text`.
    #[track_caller]
    pub fn wait_for_file_line(&self, path: &std::path::Path, text: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let content = std::fs::read_to_string(path).unwrap_or_default();
            if content.lines().any(|line| line.contains(text)) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: no line with {text:?} after {timeout:?}: {content:?}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
