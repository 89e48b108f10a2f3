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

/// The host vsock port the agent connects to once it serves, to say so. The host connects to
/// the agent only after that: a hybrid-vsock `CONNECT` that races the guest's vsock driver can
/// stop vhost-device-vsock for good, and a guest-initiated connection proves the driver and the
/// backend are up. With hybrid vsock the host listens on the Unix socket `<uds path>_<port>`.
pub const AGENT_READY_PORT: u32 = 1025;

/// The vsock port on which the agent forwards a connection to a TCP port of the guest's
/// loopback (CRI's PortForward). The host writes `PORT <n>\n`; the agent answers `OK\n` once
/// connected to 127.0.0.1:<n> in the VM's network namespace (the pod's), or `ERR <reason>\n`,
/// and from then on the stream is the TCP connection.
pub const AGENT_FORWARD_PORT: u32 = 1026;

pub use ttrpc;
