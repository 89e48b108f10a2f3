//! StatsContainer.

use bazaar_protocols::agent::{StatsContainerRequest, StatsContainerResponse};

use crate::error::Result;
use crate::state::Agent;

/// The container's cgroup counters; an unlimited memory or pids limit reads as `u64::MAX`.
pub fn stats(agent: &Agent, req: &StatsContainerRequest) -> Result<StatsContainerResponse> {
    let container = agent.container(&req.container_id)?;
    let stats = container.require_cgroup()?.stats();
    let mut response = StatsContainerResponse::new();
    response.cpu_usage_usec = stats.cpu_usage_usec;
    response.cpu_user_usec = stats.cpu_user_usec;
    response.cpu_system_usec = stats.cpu_system_usec;
    response.memory_usage_bytes = stats.memory_usage_bytes;
    response.memory_limit_bytes = stats.memory_limit_bytes;
    response.pids_current = stats.pids_current;
    response.pids_limit = stats.pids_limit;
    response.memory_oom_kill_events = stats.memory_oom_kill_events;
    Ok(response)
}
