//! The Bazaar guest agent API (`bazaar.agent.v1`), generated from `proto/` at build time.
//!
//! The runtime uses [`agent_ttrpc::AgentServiceClient`]; the agent implements
//! [`agent_ttrpc::AgentService`] and serves it with [`agent_ttrpc::create_agent_service`].

#![allow(
    clippy::all,
    unknown_lints,
    unused_imports,
    unused_results,
    unused_mut,
    non_camel_case_types,
    non_upper_case_globals
)]

/// Messages of the agent API.
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// ttrpc client and server for the agent API.
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// The agent API version this crate speaks, reported by the agent's `Version` call.
pub const AGENT_API_VERSION: u32 = 1;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

pub use ttrpc;
