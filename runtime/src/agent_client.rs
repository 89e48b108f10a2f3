//! The host side of the guest agent API: connect over hybrid vsock and wait until it serves.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bazaar_protocols::agent::{CheckRequest, HealthCheckResponse, VersionRequest, VersionResponse};
use bazaar_protocols::agent_ttrpc::AgentServiceClient;
use bazaar_protocols::AGENT_VSOCK_PORT;
use slog::{info, Logger};
use ttrpc::context::{self, Context as TtrpcContext};
use ttrpc::r#async::transport::Socket;

/// Deadline for short control calls (create, start, signal...). Blocking calls such as
/// WaitProcess and ReadStdout pass no deadline.
pub const CONTROL_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A ttrpc context that fails the call after `timeout`.
pub fn deadline(timeout: Duration) -> TtrpcContext {
    context::with_timeout(timeout.as_nanos() as i64)
}

/// A ttrpc context for calls that may block as long as the guest process lives.
pub fn no_deadline() -> TtrpcContext {
    context::Context::default()
}

/// Connects to the agent through the VM's hybrid-vsock socket and waits until it reports
/// SERVING. The guest may still be booting: connection failures are retried until `timeout`.
pub async fn connect(
    socket: &Path,
    timeout: Duration,
    logger: &Logger,
) -> Result<AgentServiceClient> {
    let started = Instant::now();
    let stream = bazaar_hypervisor::hybrid_vsock::connect(socket, AGENT_VSOCK_PORT, timeout)
        .await
        .context("guest agent did not come up")?;
    let client = AgentServiceClient::new(ttrpc::r#async::Client::new(Socket::new(stream)));

    let remaining = timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
    let health: HealthCheckResponse = client
        .check(deadline(remaining), &CheckRequest::new())
        .await
        .context("guest agent health check failed")?;
    if health.status.value() != 1 {
        bail!("guest agent reports it is not serving (status {:?})", health.status);
    }
    let version: VersionResponse = client
        .version(deadline(CONTROL_CALL_TIMEOUT), &VersionRequest::new())
        .await
        .context("guest agent version call failed")?;
    if version.api_version != bazaar_protocols::AGENT_API_VERSION {
        bail!(
            "guest agent speaks API version {}, this runtime speaks {}: rebuild the guest image",
            version.api_version,
            bazaar_protocols::AGENT_API_VERSION
        );
    }
    info!(logger, "guest agent ready";
        "agent_version" => &version.agent_version,
        "guest_kernel" => &version.kernel_release,
        "elapsed_ms" => started.elapsed().as_millis() as u64);
    Ok(client)
}
