//! Bazaar's runtime: sandboxes (one VM each), their containers and processes, stdio, the agent
//! client and the configuration. The shim adapts containerd's Task API onto [`tasks::Tasks`].

pub mod agent_client;
pub mod cleanup;
pub mod config;
pub mod container;
pub mod error;
pub mod events;
pub mod guest_spec;
pub mod hooks;
pub mod host_cgroup;
pub mod io;
pub mod logging;
pub mod mounts;
pub mod network;
pub mod process;
pub mod sandbox;
pub mod state;
pub mod tasks;

pub use error::{Error, Result};
