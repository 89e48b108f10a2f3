//! The shim's lifecycle as containerd drives it: `start` (spawn or reuse the sandbox's shim),
//! `delete` (clean up after a shim that is gone), and serving the Task API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bazaar_runtime::cleanup;
use bazaar_runtime::config::Config;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, DeleteResponse, Error, Flags, StartOpts};
use slog::info;

use crate::convert::timestamp;
use crate::task_service::TaskService;

/// The annotation containerd's CRI plugin puts on every container of a pod.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

pub struct Service {
    id: String,
    namespace: String,
    /// containerd's own address, from which the sandbox shim's socket path is derived.
    containerd_address: String,
    exit: Arc<ExitSignal>,
}

/// The sandbox a container belongs to: its pod's sandbox under CRI, else the container itself.
fn sandbox_id(bundle: &Path, container_id: &str) -> String {
    oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| spec.annotations().clone())
        .and_then(|annotations| annotations.get(SANDBOX_ID_ANNOTATION).cloned())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| container_id.to_string())
}

fn current_bundle() -> PathBuf {
    // containerd runs the shim with the bundle as its working directory.
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        Service {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            containerd_address: args.address.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // Fail here, where containerd shows our stderr to the user, rather than deep in Create.
        Config::load_from_env().map_err(|err| Error::InvalidArgument(format!("{err:#}")))?;
        let grouping = sandbox_id(&current_bundle(), &opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = current_bundle();
        let config = Config::load_from_env().unwrap_or_default();
        let logger = crate::logger::for_shim(&config.log.level, &self.namespace, &self.id);
        let sandbox = sandbox_id(&bundle, &self.id);
        info!(logger, "cleaning up after the shim"; "sandbox" => &sandbox);
        cleanup::after_dead_shim(&config, &sandbox, &self.id, &bundle, &logger);
        if sandbox == self.id {
            // A shim that was killed never removed its socket; containerd does not either.
            let address = containerd_shim::socket_address(
                &self.containerd_address,
                &self.namespace,
                &sandbox,
            );
            let path = address.trim_start_matches("unix://");
            if std::path::Path::new(path).exists() {
                let _ = std::fs::remove_file(path);
            }
        }
        let mut response = DeleteResponse::new();
        // As runc's shim reports a task it had to clean up after: killed (128 + SIGKILL).
        response.exit_status = 128 + libc::SIGKILL as u32;
        response.exited_at = Some(timestamp(std::time::SystemTime::now())).into();
        Ok(response)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        // A bad configuration must not kill the shim before containerd can hear why: it is kept
        // and returned by Create.
        let (config, config_error) = match Config::load_from_env() {
            Ok(config) => (config, None),
            Err(err) => (Config::default(), Some(format!("{err:#}"))),
        };
        let logger = crate::logger::for_shim(&config.log.level, &self.namespace, &self.id);
        let sandbox = sandbox_id(&current_bundle(), &self.id);
        info!(logger, "shim serving"; "sandbox" => &sandbox, "pid" => std::process::id());
        TaskService::new(
            sandbox,
            self.namespace.clone(),
            config,
            config_error,
            // Our own publisher on containerd's address: the crate's reorders events after a
            // containerd restart (see `publisher`). Its idle queue task is left to itself.
            &publisher.address,
            self.exit.clone(),
            logger,
        )
    }
}
