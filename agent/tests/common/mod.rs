//! Harness of the agent's component tests: a busybox root filesystem in a scratch directory, the
//! real `bazaar-agent` binary serving on a Unix socket in host mode, and a ttrpc client.

#![allow(dead_code)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bazaar_protocols::agent::*;
use bazaar_protocols::agent_ttrpc::AgentServiceClient;
use serde_json::{json, Value};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "sleep", "pwd", "env", "ls", "true", "false", "hostname", "tty",
    "printf", "wc", "head", "seq", "tr", "grep",
];

/// One running agent and its scratch directory.
pub struct Env {
    pub dir: PathBuf,
    pub shared: PathBuf,
    agent: Option<Child>,
    pub client: AgentServiceClient,
    /// A suffix that makes container ids unique across parallel tests.
    pub suffix: String,
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// Whether the component tests can run here; prints a loud SKIP when not.
pub fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        bazaar_tests::skip::skip(test, "the agent component tests need root (namespaces, mounts)");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        bazaar_tests::skip::skip(test, &format!("{BUSYBOX} (busybox-static) is not installed"));
        return false;
    }
    true
}

/// The cgroup v2 hierarchy to give the agent: the unified mount of a hybrid host, or none.
fn cgroup_root() -> PathBuf {
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if Path::new(candidate).join("cgroup.controllers").exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("/nonexistent-cgroup2")
}

impl Env {
    /// Builds the rootfs, starts the agent (host mode) and connects to it; creates the sandbox.
    pub async fn start(name: &str, extra_args: &[&str]) -> Env {
        let mut args: Vec<String> =
            vec!["--cgroup-root".into(), cgroup_root().display().to_string()];
        args.extend(extra_args.iter().map(|arg| arg.to_string()));
        Env::launch(name, &[], &std::env::temp_dir(), &args).await
    }

    /// Like [`Env::start`] but with the agent as PID 1 of new mount, PID, UTS, IPC and network
    /// namespaces (`unshare`), i.e. in its guest mode: it mounts /proc, /sys, /dev, /run, /tmp
    /// and cgroup2 itself (inside its own mount namespace) and "reboots" (ends its PID
    /// namespace) on DestroySandbox. The scratch directory lives in /var/tmp, because the agent
    /// mounts a tmpfs over /tmp. A tmpfs over /etc keeps the agent's guest-only writes
    /// (/etc/resolv.conf) away from the host; `exec` keeps the agent PID 1.
    pub async fn start_as_pid1(name: &str) -> Env {
        let launcher = [
            "unshare",
            "--mount",
            "--pid",
            "--uts",
            "--ipc",
            "--net",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            "mount -t tmpfs bazaar-test-etc /etc && exec \"$0\" \"$@\"",
        ];
        Env::launch(name, &launcher, Path::new("/var/tmp"), &[]).await
    }

    async fn launch(name: &str, launcher: &[&str], base: &Path, extra_args: &[String]) -> Env {
        let suffix = format!("{}-{name}", std::process::id());
        let dir = base.join(format!("bazaar-agent-it-{suffix}"));
        let _ = std::fs::remove_dir_all(&dir);
        let shared = dir.join("shared");
        build_rootfs(&shared.join("rootfs"));
        let socket = dir.join("agent.sock");
        let address = format!("unix://{}", socket.display());
        // BAZAAR_AGENT_BIN runs the tests against another build, e.g. the static release binary.
        let binary = std::env::var_os("BAZAAR_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bazaar-agent")));
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let agent = command
            .args(["--listen", &address, "--shared-dir"])
            .arg(&shared)
            .args(["--log-level", "debug"])
            .args(extra_args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start bazaar-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = loop {
            if socket.exists() {
                if let Ok(client) = ttrpc::r#async::Client::connect(&address).await {
                    break AgentServiceClient::new(client);
                }
            }
            assert!(Instant::now() < deadline, "the agent did not come up on {address}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let env = Env { dir, shared, agent: Some(agent), client, suffix };
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = format!("sandbox-{}", env.suffix);
        req.shared_fs_tag = "bazaarfs".to_string();
        req.hostname = "bazaar-pid1-host".to_string();
        req.dns = vec!["nameserver 10.0.2.3".to_string()];
        env.client.create_sandbox(ctx(), &req).await.expect("CreateSandbox");
        env
    }

    pub fn id(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Waits for the agent process to exit by itself (after DestroySandbox).
    pub fn wait_agent_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Some(agent) = self.agent.as_mut() else { return true };
        while Instant::now() < deadline {
            if let Ok(Some(_)) = agent.try_wait() {
                self.agent = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub async fn create(
        &self,
        id: &str,
        spec: &Value,
        terminal: bool,
        stdin: bool,
    ) -> ttrpc::Result<Empty> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.to_string();
        req.oci_spec_json = serde_json::to_vec(spec).expect("spec json");
        req.terminal = terminal;
        req.stdin = stdin;
        self.client.create_container(ctx(), &req).await
    }

    pub async fn start_container(&self, id: &str) -> u32 {
        let mut req = StartContainerRequest::new();
        req.container_id = id.to_string();
        self.client.start_container(ctx(), &req).await.expect("StartContainer").pid
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> i32 {
        let mut req = WaitProcessRequest::new();
        req.container_id = id.to_string();
        req.exec_id = exec_id.to_string();
        self.client.wait_process(ctx(), &req).await.expect("WaitProcess").status
    }

    /// Reads a stream to its end.
    pub async fn read_all(&self, id: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut req = ReadStreamRequest::new();
            req.container_id = id.to_string();
            req.exec_id = exec_id.to_string();
            req.len = 4096;
            let response = if stderr {
                self.client.read_stderr(ctx(), &req).await
            } else {
                self.client.read_stdout(ctx(), &req).await
            };
            let data = response.expect("read stream").data;
            if data.is_empty() {
                return out;
            }
            assert!(data.len() <= 4096);
            out.extend(data);
        }
    }

    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> ttrpc::Result<Empty> {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.signal = signal;
        req.all = all;
        self.client.signal_process(ctx(), &req).await
    }

    pub async fn remove(&self, id: &str) {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.to_string();
        self.client.remove_container(ctx(), &req).await.expect("RemoveContainer");
    }

    /// Create, start, wait, and collect stdout/stderr: (status, stdout, stderr).
    pub async fn run(&self, id: &str, spec: &Value) -> (i32, String, String) {
        self.create(id, spec, false, false).await.expect("CreateContainer");
        self.start_container(id).await;
        let status = self.wait(id, "").await;
        // Read only after the exit: nothing may be lost.
        let stdout = self.read_all(id, "", false).await;
        let stderr = self.read_all(id, "", true).await;
        self.remove(id).await;
        (
            status,
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            // SIGTERM: a host-mode agent removes its containers, then exits.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(agent.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = agent.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let leftovers = mounts_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        if !std::thread::panicking() {
            assert!(
                leftovers.is_empty(),
                "mounts left under {}: {leftovers:?}",
                self.dir.display()
            );
        }
    }
}

/// Mount points of this (host) mount namespace under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn build_rootfs(rootfs: &Path) {
    for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/alice"] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("mkdir in rootfs");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in APPLETS {
        symlink("busybox", rootfs.join("bin").join(applet)).expect("applet symlink");
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n",
    )
    .expect("write passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nalice:x:1000:\nstaff:x:50:alice\n")
        .expect("write group");
    nix::unistd::chown(&rootfs.join("home/alice"), Some(1000.into()), Some(1000.into()))
        .expect("chown home");
    std::fs::write(rootfs.join("etc/data"), "not a program\n").expect("write data");
}

/// A minimal OCI spec running `args` in the test rootfs.
pub fn spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/bin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID",
                             "CAP_SETUID", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "/run/bazaar/shared/rootfs"},
        "hostname": "bazaar-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}
