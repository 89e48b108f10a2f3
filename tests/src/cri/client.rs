//! A blocking CRI client: one tokio runtime of its own, one gRPC channel to containerd's
//! socket, and a deadline on every call (a hung runtime must fail the test, not stall it).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::api::image_service_client::ImageServiceClient;
use super::api::runtime_service_client::RuntimeServiceClient;

pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl CriClient {
    /// Connects to the CRI service on containerd's gRPC socket.
    pub fn connect(socket: &Path) -> Result<CriClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the CRI client's runtime")?;
        let path: PathBuf = socket.to_path_buf();
        // tonic dials TCP only; the URI is a placeholder, the connector opens the Unix socket.
        let endpoint =
            Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(10));
        let channel =
            runtime
                .block_on(endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                })))
                .with_context(|| format!("connecting to CRI at {}", socket.display()))?;
        Ok(CriClient { runtime, channel })
    }

    pub fn runtime_service(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn image_service(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one call to completion, failing it after `timeout`; `what` names it in errors.
    pub fn call<T, F>(&self, what: &str, timeout: Duration, call: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let _guard = self.runtime.enter();
        let outcome = self.runtime.block_on(tokio::time::timeout(timeout, call));
        match outcome {
            Err(_) => Err(anyhow!("CRI {what} did not answer within {timeout:?}")),
            Ok(Err(status)) => {
                Err(anyhow!("CRI {what} failed: {:?}: {}", status.code(), status.message()))
            }
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}
