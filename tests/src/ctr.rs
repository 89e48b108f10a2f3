//! `ctr run` as the tests use it: one builder, a deadline, captured output and exit code.
//!
//! `ctr run` without `-t` connects its own stdin to the task's (through a fifo): bytes given with
//! [`CtrRun::stdin`] reach the process, and the end of them is the process's EOF. Without
//! `stdin`, ctr's stdin is /dev/null. ctr exits with the task's exit status.

use std::process::Command;
use std::time::Duration;

use crate::containerd::PrivateContainerd;
use crate::process::{self, Output};

/// containerd's runtime name for Bazaar (`containerd-shim-bazaar-v2` on containerd's PATH).
pub const BAZAAR_RUNTIME: &str = "io.containerd.bazaar.v2";
/// containerd's runtime name for runc, the reference the tests compare Bazaar with.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

/// One `ctr run` against one containerd.
#[derive(Clone)]
pub struct CtrRun<'a> {
    containerd: &'a PrivateContainerd,
    runtime: String,
    image: String,
    id: String,
    args: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    detach: bool,
    extra_flags: Vec<String>,
    config: Option<std::path::PathBuf>,
}

impl<'a> CtrRun<'a> {
    pub fn new(
        containerd: &'a PrivateContainerd,
        runtime: &str,
        image: &str,
        id: &str,
        timeout: Duration,
    ) -> Self {
        CtrRun {
            containerd,
            runtime: runtime.to_string(),
            image: image.to_string(),
            id: id.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout,
            detach: false,
            extra_flags: Vec::new(),
            config: None,
        }
    }

    /// `--config FILE`: the complete runtime spec (its root path a host directory); ctr then
    /// uses no image, no snapshot and none of the spec flags, only the container id.
    pub fn config(mut self, spec: &std::path::Path) -> Self {
        self.config = Some(spec.to_path_buf());
        self
    }

    /// The process to run (the image's `Cmd` when empty).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// `--env KEY=VALUE`.
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.to_string());
        self
    }

    /// `--cwd DIR`.
    pub fn cwd(mut self, dir: &str) -> Self {
        self.cwd = Some(dir.to_string());
        self
    }

    pub fn image(mut self, image: &str) -> Self {
        self.image = image.to_string();
        self
    }

    pub fn runtime(mut self, runtime: &str) -> Self {
        self.runtime = runtime.to_string();
        self
    }

    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = Some(bytes.to_vec());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `-d` instead of `--rm`: the container stays; the test must remove it.
    pub fn detach(mut self) -> Self {
        self.detach = true;
        self
    }

    /// Any other `ctr run` flag.
    pub fn flag(mut self, flag: &str) -> Self {
        self.extra_flags.push(flag.to_string());
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The full ctr command line.
    pub fn command(&self) -> Command {
        let mut cmd = self.containerd.ctr_command();
        cmd.arg("run").arg("--runtime").arg(&self.runtime);
        if self.detach {
            // ctr removes the fifos of a detached task only on `ctr tasks delete`; keep them in
            // the test's temp dir rather than /run/containerd/fifo.
            cmd.arg("--detach").arg("--fifo-dir").arg(self.containerd.dir().join("fifo"));
        } else {
            cmd.arg("--rm");
        }
        for kv in &self.env {
            cmd.arg("--env").arg(kv);
        }
        if let Some(dir) = &self.cwd {
            cmd.arg("--cwd").arg(dir);
        }
        cmd.args(&self.extra_flags);
        match &self.config {
            Some(spec) => cmd.arg("--config").arg(spec).arg(&self.id),
            None => cmd.arg(&self.image).arg(&self.id).args(&self.args),
        };
        cmd
    }

    /// Runs it; on timeout ctr is killed by PID and the output says `timed_out`.
    pub fn run(&self) -> Output {
        let cmd = self.command();
        match process::run(cmd, self.stdin.as_deref(), self.timeout) {
            Ok(out) => out,
            Err(err) => panic!("cannot run ctr: {err:#}"),
        }
    }
}

/// One `ctr task exec` against one containerd: an extra process in a running container.
///
/// `ctr task exec` exits with the process's exit status; without `tty` its stdin is the
/// harness's bytes (or /dev/null). With `tty` ctr needs a terminal on its own stdin: run
/// [`CtrExec::command`] under [`crate::pty::script_command`].
#[derive(Clone)]
pub struct CtrExec<'a> {
    containerd: &'a PrivateContainerd,
    id: String,
    exec_id: String,
    args: Vec<String>,
    tty: bool,
    detach: bool,
    cwd: Option<String>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl<'a> CtrExec<'a> {
    pub fn new(
        containerd: &'a PrivateContainerd,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Self {
        CtrExec {
            containerd,
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            args: Vec::new(),
            tty: false,
            detach: false,
            cwd: None,
            stdin: None,
            timeout,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// `--tty`.
    pub fn tty(mut self) -> Self {
        self.tty = true;
        self
    }

    /// `--detach`: ctr returns once the process started.
    pub fn detach(mut self) -> Self {
        self.detach = true;
        self
    }

    /// `--cwd DIR`.
    pub fn cwd(mut self, dir: &str) -> Self {
        self.cwd = Some(dir.to_string());
        self
    }

    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = Some(bytes.to_vec());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn exec_id(&self) -> &str {
        &self.exec_id
    }

    /// The full ctr command line.
    pub fn command(&self) -> Command {
        let mut cmd = self.containerd.ctr_command();
        cmd.arg("tasks").arg("exec").arg("--exec-id").arg(&self.exec_id);
        // Keep the fifos in the test's temp dir rather than /run/containerd/fifo.
        cmd.arg("--fifo-dir").arg(self.containerd.dir().join("fifo"));
        if self.tty {
            cmd.arg("--tty");
        }
        if self.detach {
            cmd.arg("--detach");
        }
        if let Some(dir) = &self.cwd {
            cmd.arg("--cwd").arg(dir);
        }
        cmd.arg(&self.id).args(&self.args);
        cmd
    }

    /// Runs it; on timeout ctr is killed by PID and the output says `timed_out`.
    pub fn run(&self) -> Output {
        match process::run(self.command(), self.stdin.as_deref(), self.timeout) {
            Ok(out) => out,
            Err(err) => panic!("cannot run ctr: {err:#}"),
        }
    }
}
