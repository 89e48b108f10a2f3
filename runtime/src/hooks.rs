//! OCI hooks (runtime spec, "POSIX-platform Hooks"), run on the host by the runtime.
//!
//! The spec's hooks name host binaries (containerd's, nerdctl's, NVIDIA's hooks live on the
//! host) and act on the host, so they run here, not in the guest, as Kata runs its OCI hooks.
//! Each hook gets `args` (`args[0]` is its argv0), exactly the `env` it lists (the shim's own
//! environment when it lists none, as runc passes its own), the container's state as JSON on
//! stdin and the bundle as its working directory (as under runc, which runs in the bundle). A
//! hook still running at its `timeout` is killed by its PID.
//!
//! Failures of `prestart`, `createRuntime`, `createContainer` and `startContainer` hooks fail the
//! operation; those of `poststart` and `poststop` are logged as warnings (runtime spec).
//! The state's `pid` is the VMM's (QEMU's) host pid: the container's init lives in the guest,
//! where its pid means nothing to a host hook; the VMM process is the container's host-side
//! body (its namespaces, cgroup and memory), as Kata reports it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Hook, Hooks};
use serde::Serialize;
use slog::{debug, warn, Logger};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The runtime-spec version of the state we hand to hooks (its 1.0 fields).
pub const STATE_OCI_VERSION: &str = "1.0.2";
/// How much of a hook's stdout and stderr is kept for the error message.
const OUTPUT_KEPT: usize = 4096;
/// How long a hook's output may stay open after it exited (a daemonised child may hold it).
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// The hook lists of the spec, in the order the lifecycle runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    /// The spec's name of the list.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// Whether a failing hook of this kind fails the lifecycle operation.
    pub fn is_fatal(self) -> bool {
        !matches!(self, HookKind::Poststart | HookKind::Poststop)
    }

    /// The container status hooks of this kind are told (what runc reports at that point).
    pub fn status(self) -> &'static str {
        match self {
            HookKind::Prestart | HookKind::CreateRuntime | HookKind::CreateContainer => "creating",
            HookKind::StartContainer => "created",
            HookKind::Poststart => "running",
            HookKind::Poststop => "stopped",
        }
    }

    fn list(self, hooks: &Hooks) -> Option<&Vec<Hook>> {
        #[allow(deprecated)]
        let prestart = hooks.prestart();
        match self {
            HookKind::Prestart => prestart.as_ref(),
            HookKind::CreateRuntime => hooks.create_runtime().as_ref(),
            HookKind::CreateContainer => hooks.create_container().as_ref(),
            HookKind::StartContainer => hooks.start_container().as_ref(),
            HookKind::Poststart => hooks.poststart().as_ref(),
            HookKind::Poststop => hooks.poststop().as_ref(),
        }
    }
}

/// The runtime spec's container state, as hooks read it on stdin.
#[derive(Debug, Clone, Serialize)]
pub struct State<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'static str,
    pub id: &'a str,
    pub status: &'static str,
    pub pid: u32,
    pub bundle: &'a Path,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

/// The hooks of one container's spec, kept from Create for Start and Delete.
#[derive(Debug, Clone, Default)]
pub struct ContainerHooks {
    hooks: Option<Hooks>,
    annotations: HashMap<String, String>,
}

impl ContainerHooks {
    pub fn from_spec(spec: &oci_spec::runtime::Spec) -> ContainerHooks {
        ContainerHooks {
            hooks: spec.hooks().clone(),
            annotations: spec.annotations().clone().unwrap_or_default(),
        }
    }

    /// Runs the hooks of `kind` in order. A fatal kind stops at the first failure and returns
    /// it; the others log each failure and go on.
    pub async fn run(
        &self,
        kind: HookKind,
        id: &str,
        pid: u32,
        bundle: &Path,
        logger: &Logger,
    ) -> Result<()> {
        let Some(list) = self.hooks.as_ref().and_then(|hooks| kind.list(hooks)) else {
            return Ok(());
        };
        let state = State {
            oci_version: STATE_OCI_VERSION,
            id,
            status: kind.status(),
            pid,
            bundle,
            annotations: &self.annotations,
        };
        let state = serde_json::to_vec(&state).context("serialising the container state")?;
        for hook in list {
            debug!(logger, "running OCI hook"; "kind" => kind.name(), "path" => %hook.path().display());
            let result = run_hook(hook, &state, bundle)
                .await
                .with_context(|| format!("{} hook {}", kind.name(), hook.path().display()));
            match result {
                Ok(()) => {}
                Err(err) if kind.is_fatal() => return Err(err),
                Err(err) => {
                    warn!(logger, "OCI hook failed"; "container" => id, "error" => format!("{err:#}"))
                }
            }
        }
        Ok(())
    }
}

/// Runs one hook to completion (or its timeout); an error says how it failed.
pub async fn run_hook(hook: &Hook, state: &[u8], cwd: &Path) -> Result<()> {
    let timeout = match hook.timeout() {
        Some(secs) if secs <= 0 => bail!("invalid timeout {secs}: it must be positive"),
        Some(secs) => Some(Duration::from_secs(secs as u64)),
        None => None,
    };
    let mut command = tokio::process::Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some(argv0) = args.first() {
            command.arg0(argv0);
        }
        command.args(args.iter().skip(1));
    }
    // With an `env`, exactly that environment; without one, the shim's (containerd's), as
    // under runc: Go's exec gives a nil `Env` the parent's environment.
    if let Some(env) = hook.env() {
        command.env_clear();
        for entry in env {
            if let Some((key, value)) = entry.split_once('=') {
                command.env(key, value);
            }
        }
    }
    command
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Should the shim's task be dropped mid-hook, the hook does not outlive it.
        .kill_on_drop(true);
    let mut child = command.spawn().context("cannot start it")?;

    // Fed from a task of its own: a hook that never reads stdin must not block us.
    let stdin = child.stdin.take();
    let state = state.to_vec();
    let feeder = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            // A hook may exit without reading its stdin (EPIPE): that is its business.
            let _ = stdin.write_all(&state).await;
        }
    });
    let stdout = tokio::spawn(read_kept(child.stdout.take()));
    let stderr = tokio::spawn(read_kept(child.stderr.take()));

    let status = match timeout {
        None => child.wait().await.context("waiting for it")?,
        Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => status.context("waiting for it")?,
            Err(_) => {
                // tokio's kill sends SIGKILL to the child's PID and reaps it.
                let _ = child.kill().await;
                feeder.abort();
                stdout.abort();
                stderr.abort();
                bail!("ran past its timeout of {}s and was killed", limit.as_secs());
            }
        },
    };
    feeder.abort();
    let stdout = drained(stdout).await;
    let stderr = drained(stderr).await;
    if status.success() {
        return Ok(());
    }
    bail!(
        "{}{}{}",
        describe(status),
        output_part("stderr", &stderr),
        output_part("stdout", &stdout)
    )
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("{status}"),
    }
}

fn output_part(name: &str, text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("; {name}: {text}")
    }
}

/// Reads a hook's output, keeping the first [`OUTPUT_KEPT`] bytes and discarding the rest (a
/// chatty hook must not block on a full pipe).
async fn read_kept(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else { return String::new() };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The output read so far, waiting at most [`OUTPUT_DRAIN`] for its end.
async fn drained(reader: tokio::task::JoinHandle<String>) -> String {
    let abort = reader.abort_handle();
    match tokio::time::timeout(OUTPUT_DRAIN, reader).await {
        Ok(Ok(text)) => text,
        _ => {
            abort.abort();
            String::new()
        }
    }
}

/// A hook's path as the spec gives it: absolute (runtime spec); checked at Create so that a bad
/// spec fails before anything starts.
/// The argument by which Docker's prestart hook (dockerd re-executed) moves the container's
/// veth into the namespace of the pid the state names: under Bazaar that is the VMM's, in the
/// host's network namespace.
const DOCKER_NETWORK_HOOK: &str = "libnetwork-setkey";

pub fn validate(spec: &oci_spec::runtime::Spec) -> Result<()> {
    let Some(hooks) = spec.hooks() else { return Ok(()) };
    for kind in [
        HookKind::Prestart,
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
        HookKind::StartContainer,
        HookKind::Poststart,
        HookKind::Poststop,
    ] {
        for hook in kind.list(hooks).into_iter().flatten() {
            let path: &PathBuf = hook.path();
            if !path.is_absolute() {
                bail!("{} hook path {} is not absolute", kind.name(), path.display());
            }
            if hook.args().iter().flatten().any(|arg| arg == DOCKER_NETWORK_HOOK) {
                bail!(
                    "the spec's {} hook is Docker's network setup ({DOCKER_NETWORK_HOOK}): Bazaar \
                     runs hooks on the host, where it would configure the host's network \
                     namespace, not the VM's; run the container with --network none (or give \
                     it a network namespace path, as CRI does)",
                    kind.name()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
