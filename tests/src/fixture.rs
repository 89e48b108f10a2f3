//! [`TestEnv`]: everything one e2e test needs, set up and torn down in one place.
//!
//! `start` takes the suite lock, snapshots the machine for the leak check, writes the Bazaar
//! configuration, starts a private containerd (the built shim first on its `PATH`,
//! `BAZAAR_CONFIG` in its environment) and imports the busybox image. `finish` removes whatever
//! containers are left (a leak in itself), stops containerd, waits for teardown and fails the
//! test if anything of it is left; leftovers are cleaned up either way. A test that panics
//! before `finish` still gets the cleanup (in `Drop`) and containerd's log in its output.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::bazaar_config::{self, BazaarConfig, CONFIG_ENV};
use crate::containerd::{Options, PrivateContainerd};
use crate::ctr::{CtrRun, BAZAAR_RUNTIME, RUNC_RUNTIME};
use crate::image;
use crate::leaks::{LeakCheck, Leaks, Scope};
use crate::lock::SuiteLock;
use crate::paths;
use crate::process::{is_root, Output};
use crate::tempdir::TempDir;

/// Overrides the deadline of one `ctr run` under Bazaar (seconds).
pub const TIMEOUT_ENV: &str = "BAZAAR_TEST_TIMEOUT_SECS";
/// How long teardown (shim, VM, helpers) may take after containerd is stopped.
pub const TEARDOWN_GRACE: Duration = Duration::from_secs(15);

/// Which runtime a test's `ctr run`s use by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    Bazaar,
}

impl Runtime {
    pub fn containerd_name(self) -> &'static str {
        match self {
            Runtime::Runc => RUNC_RUNTIME,
            Runtime::Bazaar => BAZAAR_RUNTIME,
        }
    }

    /// Default deadline of one `ctr run`: a VM under TCG on a busy 2-core machine is slow.
    pub fn default_timeout(self) -> Duration {
        match self {
            Runtime::Runc => Duration::from_secs(30),
            Runtime::Bazaar => {
                let secs = std::env::var(TIMEOUT_ENV).ok().and_then(|s| s.parse().ok());
                Duration::from_secs(secs.unwrap_or(120))
            }
        }
    }
}

/// The configuration file the shim is pointed at.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// [`BazaarConfig::for_tests`]: the guest built in this tree.
    Default,
    /// These settings.
    Config(BazaarConfig),
    /// This text, verbatim (invalid input tests).
    Text(String),
    /// `BAZAAR_CONFIG` names a file that does not exist.
    Missing,
    /// `BAZAAR_CONFIG` names a directory.
    Directory,
}

pub struct Builder {
    name: String,
    runtime: Runtime,
    config: ConfigSource,
    needs_guest: bool,
    cri: bool,
}

impl Builder {
    /// Enables containerd's CRI plugin (pods through [`TestEnv::cri`]), with a CNI network and
    /// the images in the plugin's namespace.
    pub fn cri(mut self) -> Self {
        self.cri = true;
        self
    }

    pub fn config(mut self, config: ConfigSource) -> Self {
        self.config = config;
        self
    }

    /// Whether the test needs the guest kernel and initrd built in this tree (default: yes).
    /// Tests of configuration errors that stop before any VM can say no.
    pub fn needs_guest(mut self, needs: bool) -> Self {
        self.needs_guest = needs;
        self
    }

    /// Sets up the environment, or returns `None` after a loud SKIP when not root.
    ///
    /// Panics (fails the test) when a Bazaar artefact is missing: tests are never skipped
    /// silently because something was not built.
    pub fn start(self) -> Option<TestEnv> {
        if !is_root() {
            crate::skip::skip(
                &self.name,
                "the e2e tests need root (containerd, mounts, VMs); run them as root: `make test`",
            );
            return None;
        }
        if self.runtime == Runtime::Bazaar {
            if let Err(err) = paths::require_bazaar_artefacts(self.needs_guest) {
                panic!("{err:#}");
            }
        }
        match TestEnv::set_up(self) {
            Ok(env) => Some(env),
            Err(err) => panic!("cannot set up the test environment: {err:#}"),
        }
    }
}

/// What teardown found.
#[derive(Debug)]
pub struct Teardown {
    /// Leftovers of the test (already cleaned up when possible).
    pub found: Leaks,
    /// What was still there after the cleanup.
    pub remaining: Leaks,
    /// containerd's log, kept under `target/tmp/bazaar-e2e/`.
    pub log: PathBuf,
}

pub struct TestEnv {
    name: String,
    runtime: Runtime,
    containerd: Option<PrivateContainerd>,
    leak_check: LeakCheck,
    scope: Mutex<Scope>,
    config_path: Option<PathBuf>,
    /// Set when the CRI plugin is enabled: what its teardown needs.
    cri: Option<crate::cri::pods::CriEnv>,
    done: bool,
    _lock: SuiteLock,
}

impl TestEnv {
    /// `TestEnv::builder(name, runtime).start()` with the default configuration.
    pub fn start(name: &str, runtime: Runtime) -> Option<TestEnv> {
        Self::builder(name, runtime).start()
    }

    pub fn builder(name: &str, runtime: Runtime) -> Builder {
        Builder {
            name: name.to_string(),
            runtime,
            config: ConfigSource::Default,
            needs_guest: true,
            cri: false,
        }
    }

    fn set_up(b: Builder) -> anyhow::Result<TestEnv> {
        let lock = SuiteLock::acquire()?;
        let leak_check = LeakCheck::snapshot();
        let dir = TempDir::new("bzt")?;
        let token = dir.token();

        let cri = b.cri.then(|| crate::cri::pods::CriEnv::new(dir.path(), &token));
        let mut options = Options {
            path_prepend: vec![paths::shim_dir()],
            env: Vec::new(),
            cri: cri.as_ref().map(|c| c.settings.clone()),
        };
        let config_path = match b.runtime {
            Runtime::Runc => None,
            Runtime::Bazaar => Some(write_config(dir.path(), &b.config)?),
        };
        if let Some(p) = &config_path {
            options.env.push((CONFIG_ENV.to_string(), p.to_string_lossy().into_owned()));
        }

        let containerd_dir = dir.path().to_path_buf();
        let containerd = PrivateContainerd::start_in(dir, &options)?;
        let scope = Scope {
            token,
            ids: Vec::new(),
            containerd_socket: containerd.socket(),
            containerd_dir,
        };
        let env = TestEnv {
            name: b.name,
            runtime: b.runtime,
            containerd: Some(containerd),
            leak_check,
            scope: Mutex::new(scope),
            config_path,
            cri,
            done: false,
            _lock: lock,
        };
        let tarball = image::tarball_in(env.containerd().dir())?;
        match &env.cri {
            None => image::import(env.containerd(), &tarball)?,
            Some(cri) => cri.import_images(env.containerd(), &tarball)?,
        }
        Ok(env)
    }

    pub fn containerd(&self) -> &PrivateContainerd {
        self.containerd.as_ref().expect("containerd is running until teardown")
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// The configuration file the shim was pointed at (Bazaar tests only).
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The CRI client and pod helpers (tests started with [`Builder::cri`] only).
    pub fn cri(&self) -> crate::cri::pods::Pods<'_> {
        let cri = self.cri.as_ref().expect("TestEnv::cri needs TestEnv::builder(..).cri()");
        match cri.connect(self.containerd()) {
            Ok(client) => crate::cri::pods::Pods::new(self, cri, client),
            Err(err) => panic!("cannot connect to CRI: {err:#}"),
        }
    }

    /// Records an id the test did not choose (a CRI pod or container id) for the leak check.
    pub fn track_id(&self, id: &str) {
        self.scope.lock().unwrap().ids.push(id.to_string());
    }

    /// The test's token (the name of its temp dir), which everything it creates carries.
    pub fn token(&self) -> String {
        self.scope.lock().unwrap().token.clone()
    }

    /// A container id unique on this machine (`<token>-<name>`), recorded for the leak check.
    pub fn new_id(&self, name: &str) -> String {
        let mut scope = self.scope.lock().unwrap();
        let id = format!("{}-{name}", scope.token);
        scope.ids.push(id.clone());
        id
    }

    /// A `ctr run --rm` of [`image::IMAGE`] with the test's runtime and a fresh container id.
    pub fn run(&self, name: &str) -> CtrRun<'_> {
        let id = self.new_id(name);
        CtrRun::new(
            self.containerd(),
            self.runtime.containerd_name(),
            image::IMAGE,
            &id,
            self.runtime.default_timeout(),
        )
    }

    /// The same, with runc: the reference Bazaar is compared with (same containerd, same image).
    pub fn run_runc(&self, name: &str) -> CtrRun<'_> {
        let id = self.new_id(name);
        CtrRun::new(
            self.containerd(),
            RUNC_RUNTIME,
            image::IMAGE,
            &id,
            Runtime::Runc.default_timeout(),
        )
    }

    /// Any other ctr command against the test's containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        match self.containerd().ctr(args, Duration::from_secs(60)) {
            Ok(out) => out,
            Err(err) => panic!("cannot run ctr {args:?}: {err:#}"),
        }
    }

    /// Fails the test, with ctr's output and containerd's log, unless `out` succeeded.
    #[track_caller]
    pub fn assert_success(&self, out: &Output) {
        assert!(
            out.success(),
            "command failed: {}\nend of containerd's log:\n{}",
            out.describe(),
            self.log_tail()
        );
    }

    /// The end of containerd's log (shim messages included), for assertion messages.
    pub fn log_tail(&self) -> String {
        self.containerd.as_ref().map(|c| c.log_tail(60)).unwrap_or_default()
    }

    /// Tears down and fails the test if anything of it was left behind.
    pub fn finish(mut self) {
        let t = self.teardown(true, TEARDOWN_GRACE);
        if !t.found.is_empty() {
            let still = if t.remaining.is_empty() {
                "all cleaned up now".to_string()
            } else {
                format!("the harness could NOT clean up:\n{}", t.remaining.report())
            };
            panic!(
                "test {} left things behind:\n{}({still}); containerd log: {}",
                self.name,
                t.found.report(),
                t.log.display()
            );
        }
    }

    /// Tears down without failing and says what was found (for tests of the harness itself).
    /// With `remove_containers` false, containers still running are left to the leak check;
    /// `grace` is how long to wait for leftovers to go away by themselves.
    pub fn finish_report(mut self, remove_containers: bool, grace: Duration) -> Teardown {
        self.teardown(remove_containers, grace)
    }

    /// Removes leftover containers, stops containerd, checks for and cleans up leaks.
    fn teardown(&mut self, remove_containers: bool, grace: Duration) -> Teardown {
        self.done = true;
        let mut leftover_containers = Vec::new();
        if let (Some(c), true) = (&self.containerd, remove_containers) {
            if let Some(cri) = &self.cri {
                leftover_containers.extend(cri.remove_all_pods(c));
            }
            leftover_containers.extend(remove_all_containers(c));
        }
        let log = self.save_log();
        if let Some(c) = self.containerd.as_mut() {
            if let Err(err) = c.stop() {
                eprintln!("bazaar-tests: stopping containerd: {err:#}");
            }
        }
        let scope = self.scope.lock().unwrap().clone();
        let mut found = self.leak_check.wait_until_clean(&scope, grace);
        if let Some(cri) = &self.cri {
            found.other.extend(cri.after_containerd_stopped(grace));
        }
        for id in leftover_containers {
            found.other.push(format!("container {id} was still in containerd after the test"));
        }
        for p in &found.unattributed {
            eprintln!(
                "bazaar-tests: note: new process {} not attributable to this test: {}",
                p.pid, p.cmdline
            );
        }
        let mut remaining = Leaks::default();
        if !found.is_empty() {
            eprintln!("bazaar-tests: LEAKS of {}:\n{}", self.name, found.report());
            self.leak_check.clean_up(&found);
            remaining = self.leak_check.find(&scope);
        }
        // Dropping containerd unmounts anything left under its dir and removes the dir.
        self.containerd = None;
        if scope.containerd_dir.exists() {
            let msg = format!("temp dir {} could not be removed", scope.containerd_dir.display());
            found.other.push(msg.clone());
            remaining.other.push(msg);
        }
        Teardown { found, remaining, log }
    }

    /// Copies containerd's log to `target/tmp/bazaar-e2e/<test>.containerd.log`.
    fn save_log(&self) -> PathBuf {
        let dir = paths::artefact_dir();
        let dest = dir.join(format!("{}.containerd.log", self.name));
        if let Some(c) = &self.containerd {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(c.log_path(), &dest);
        }
        dest
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let tail = self.log_tail();
        let t = self.teardown(true, TEARDOWN_GRACE);
        if std::thread::panicking() {
            eprintln!(
                "bazaar-tests: {} failed; end of containerd's log (all of it in {}):\n{tail}",
                self.name,
                t.log.display()
            );
        }
        if !t.found.is_empty() {
            eprintln!("bazaar-tests: {} also left things behind (cleaned up)", self.name);
        }
    }
}

fn write_config(dir: &Path, source: &ConfigSource) -> anyhow::Result<PathBuf> {
    let path = dir.join("configuration.toml");
    match source {
        ConfigSource::Default => BazaarConfig::for_tests().write(&path)?,
        ConfigSource::Config(cfg) => cfg.write(&path)?,
        ConfigSource::Text(text) => bazaar_config::write_raw(&path, text)?,
        ConfigSource::Missing => return Ok(dir.join("no-such-configuration.toml")),
        ConfigSource::Directory => std::fs::create_dir(&path)?,
    }
    Ok(path)
}

/// Kills and deletes every container left in `containerd`; returns their ids.
fn remove_all_containers(c: &PrivateContainerd) -> Vec<String> {
    let t = Duration::from_secs(30);
    let Ok(list) = c.ctr(&["containers", "list", "--quiet"], t) else { return Vec::new() };
    let ids: Vec<String> =
        list.stdout.lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
    for id in &ids {
        let _ = c.ctr(&["tasks", "kill", "--signal", "SIGKILL", id], t);
        let _ = c.ctr(&["tasks", "delete", "--force", id], t);
        let _ = c.ctr(&["containers", "delete", id], t);
    }
    ids
}

/// Helpers of the Task API tests: execs, task status, events, a containerd restart.
impl TestEnv {
    /// A `ctr task exec --exec-id <exec_id> <id>` with the test runtime's deadline.
    pub fn exec(&self, id: &str, exec_id: &str) -> crate::ctr::CtrExec<'_> {
        crate::ctr::CtrExec::new(self.containerd(), id, exec_id, self.runtime.default_timeout())
    }

    /// Any ctr command, with a deadline of its own.
    pub fn ctr_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        match self.containerd().ctr(args, timeout) {
            Ok(out) => out,
            Err(err) => panic!("cannot run ctr {args:?}: {err:#}"),
        }
    }

    /// `(pid, status)` of the task of container `id` as `ctr tasks list` shows it, if listed.
    pub fn task_status(&self, id: &str) -> Option<(u32, String)> {
        let out = self.ctr(&["tasks", "list"]);
        out.stdout.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [task, pid, status] if *task == id => {
                    Some((pid.parse().unwrap_or(0), status.to_string()))
                }
                _ => None,
            }
        })
    }

    /// Polls `ctr tasks list` until the task of `id` has `status`; fails the test otherwise.
    #[track_caller]
    pub fn wait_for_status(&self, id: &str, status: &str, timeout: Duration) {
        let start = std::time::Instant::now();
        loop {
            let now = self.task_status(id);
            if now.as_ref().is_some_and(|(_, s)| s == status) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "task {id} not {status} after {timeout:?} (it is {now:?}); containerd's log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts `ctr events` against the test's containerd (live once this returns).
    pub fn watch_events(&self) -> crate::events::EventWatcher {
        match crate::events::EventWatcher::start(self.containerd()) {
            Ok(w) => w,
            Err(err) => panic!("cannot watch containerd's events: {err:#}"),
        }
    }

    /// Runs `run` (made with [`CtrRun::detach`]) and waits until its task is RUNNING; returns
    /// the container id.
    #[track_caller]
    pub fn start_detached(&self, run: CtrRun<'_>) -> String {
        let id = run.id().to_string();
        let out = run.run();
        self.assert_success(&out);
        self.wait_for_status(&id, "RUNNING", Duration::from_secs(60));
        id
    }

    /// Ends container `id` as a user would: SIGKILL to every process if its task still runs,
    /// then `ctr tasks delete` and `ctr containers delete`, each of which must succeed.
    /// Returns what `ctr tasks delete` printed (it warns of a non-zero exit status).
    #[track_caller]
    pub fn remove_container(&self, id: &str) -> Output {
        if let Some((_, status)) = self.task_status(id) {
            if status != "STOPPED" {
                let out = self.ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", id]);
                self.assert_success(&out);
                self.wait_for_status(id, "STOPPED", Duration::from_secs(60));
            }
        }
        let deleted = self.ctr(&["tasks", "delete", id]);
        self.assert_success(&deleted);
        self.assert_success(&self.ctr(&["containers", "delete", id]));
        deleted
    }

    /// Stops the test's containerd with SIGTERM (by PID) and starts it again with the same
    /// configuration, root and state; running shims are left alone and reconnected.
    pub fn restart_containerd(&mut self) {
        let c = self.containerd.as_mut().expect("containerd is running until teardown");
        if let Err(err) = c.restart() {
            panic!("cannot restart containerd: {err:#}");
        }
    }
}
