//! `containerd-shim-bazaar-v2`: the runtime v2 shim containerd starts for `io.containerd.bazaar.v2`.
//!
//! A thin adapter: `service` answers containerd's shim lifecycle (start, delete, serve),
//! `task_service` maps each Task API call onto `bazaar_runtime::tasks::Tasks`, `publisher`
//! forwards the runtime's events to containerd (`events` maps them), and `convert` translates between the two
//! vocabularies.

mod convert;
mod events;
mod logger;
mod publisher;
mod service;
mod task_service;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.bazaar.v2";

#[tokio::main]
async fn main() {
    let config = containerd_shim::Config {
        // Logging goes through our own slog logger into containerd's log FIFO.
        no_setup_logger: true,
        // The shim's children are the VMM and its helpers, which tokio reaps by PID; a
        // catch-all waitpid(-1) reaper would steal their exit statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<service::Service>(RUNTIME_ID, Some(config)).await;
}
