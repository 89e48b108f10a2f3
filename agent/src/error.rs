//! The agent's RPC error: a status code plus a message naming the cause, turned into the ttrpc
//! status that reaches the runtime (and through it containerd).

use ttrpc::Code;

use crate::container::sync::{ErrorCode, SetupError};

/// An error answered to an RPC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// container {0} not found
    #[error("container {0} not found")]
    ContainerNotFound(String),
    /// process {exec_id:?} of container {container_id} not found
    #[error("process {exec_id:?} of container {container_id} not found")]
    ProcessNotFound { container_id: String, exec_id: String },
    /// A request that cannot be valid (bad JSON, bad id, unsupported setting).
    #[error("{0}")]
    InvalidArgument(String),
    /// An id that is already in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// A request that is valid but not in the current state (start twice, exec into a stopped
    /// container, a process that already exited).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something named by the request does not exist (rootfs, executable).
    #[error("{0}")]
    NotFound(String),
    /// The container setup failed in the helper or the container's init; the code says why.
    #[error("{}", .0.message)]
    Setup(SetupError),
    /// Anything else; the message carries the whole context chain.
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// The ttrpc status code of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::ContainerNotFound(_) | Error::ProcessNotFound { .. } | Error::NotFound(_) => {
                Code::NOT_FOUND
            }
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Setup(err) => match err.code {
                ErrorCode::NotFound => Code::NOT_FOUND,
                ErrorCode::InvalidArgument => Code::INVALID_ARGUMENT,
                ErrorCode::FailedPrecondition => Code::FAILED_PRECONDITION,
                ErrorCode::PermissionDenied => Code::PERMISSION_DENIED,
                ErrorCode::Internal => Code::INTERNAL,
            },
            Error::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(err: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), err.to_string()))
    }
}

/// The result of the agent's operations.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn internal_errors_keep_their_context() {
        let err: anyhow::Result<()> =
            Err(anyhow::anyhow!("EBUSY")).context("rmdir /sys/fs/cgroup/c1");
        let err = Error::from(err.unwrap_err());
        assert_eq!(err.to_string(), "rmdir /sys/fs/cgroup/c1: EBUSY");
        assert_eq!(err.code(), Code::INTERNAL);
    }

    #[test]
    fn setup_errors_keep_their_code() {
        let err = Error::Setup(SetupError::new(ErrorCode::NotFound, "exec: \"x\": not found"));
        let status = match ttrpc::Error::from(err) {
            ttrpc::Error::RpcStatus(status) => status,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(status.code(), Code::NOT_FOUND);
        assert_eq!(status.message(), "exec: \"x\": not found");
    }
}
