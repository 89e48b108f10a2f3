//! Errors whose kind survives the trip to containerd as a ttrpc status code.

use ttrpc::Code;

/// A runtime failure, classified the way containerd's Task API expects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    /// An error the agent returned, with the status code it chose.
    #[error("guest agent: {message}")]
    Agent { code: Code, message: String },
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The ttrpc status code containerd should see.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Agent { code, .. } => *code,
            Error::Internal(_) => Code::INTERNAL,
        }
    }

    /// Converts an agent RPC failure, keeping the agent's status code.
    pub fn from_agent(call: &str, err: ttrpc::Error) -> Error {
        match err {
            ttrpc::Error::RpcStatus(status) => Error::Agent {
                code: status.code(),
                message: format!("{call}: {}", status.message()),
            },
            other => Error::Internal(anyhow::anyhow!("{call}: agent connection failed: {other}")),
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(err: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_status_code_is_kept() {
        let status = ttrpc::get_status(Code::NOT_FOUND, "no such container");
        let err = Error::from_agent("WaitProcess", ttrpc::Error::RpcStatus(status));
        assert_eq!(err.code(), Code::NOT_FOUND);
        assert!(err.to_string().contains("no such container"));
    }

    #[test]
    fn internal_errors_keep_their_context() {
        let err: Error = anyhow::anyhow!("root cause").context("outer").into();
        let ttrpc_err: ttrpc::Error = err.into();
        match ttrpc_err {
            ttrpc::Error::RpcStatus(status) => {
                assert_eq!(status.code(), Code::INTERNAL);
                assert!(
                    status.message().contains("outer") && status.message().contains("root cause")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
