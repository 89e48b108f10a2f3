//! Translations between containerd's protobuf types and the runtime's.

use std::time::{SystemTime, UNIX_EPOCH};

use bazaar_protocols::agent::StatsContainerResponse;
use bazaar_runtime::mounts::RootfsMount;
use bazaar_runtime::process::Status;
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::protos::types::task::Status as TaskStatus;

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = since.as_secs() as i64;
    ts.nanos = since.subsec_nanos() as i32;
    ts
}

pub fn rootfs_mounts(mounts: &[Mount]) -> Vec<RootfsMount> {
    mounts
        .iter()
        .map(|m| RootfsMount {
            fs_type: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect()
}

pub fn task_status(status: Status) -> TaskStatus {
    match status {
        Status::Created => TaskStatus::CREATED,
        Status::Running => TaskStatus::RUNNING,
        Status::Stopped => TaskStatus::STOPPED,
        Status::Paused => TaskStatus::PAUSED,
    }
}

/// Guest cgroup v2 counters as containerd's cgroup v2 metrics, the type `ctr task metrics` and
/// the CRI decode for Linux tasks on cgroup v2.
pub fn metrics(stats: &StatsContainerResponse) -> anyhow::Result<Any> {
    let mut cpu = CPUStat::new();
    cpu.usage_usec = stats.cpu_usage_usec;
    cpu.user_usec = stats.cpu_user_usec;
    cpu.system_usec = stats.cpu_system_usec;
    let mut memory = MemoryStat::new();
    memory.usage = stats.memory_usage_bytes;
    memory.usage_limit = stats.memory_limit_bytes;
    let mut pids = PidsStat::new();
    pids.current = stats.pids_current;
    pids.limit = stats.pids_limit;
    let mut events = MemoryEvents::new();
    events.oom_kill = stats.memory_oom_kill_events;
    let mut metrics = Metrics::new();
    metrics.cpu = Some(cpu).into();
    metrics.memory = Some(memory).into();
    metrics.pids = Some(pids).into();
    metrics.memory_events = Some(events).into();
    let mut any = Any::new();
    any.type_url = "io.containerd.cgroups.v2.Metrics".to_string();
    any.value = metrics.write_to_bytes()?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_keep_nanoseconds() {
        let ts = timestamp(UNIX_EPOCH + Duration::new(5, 7));
        assert_eq!((ts.seconds, ts.nanos), (5, 7));
    }

    #[test]
    fn metrics_round_trip() {
        let mut stats = StatsContainerResponse::new();
        stats.memory_usage_bytes = 4096;
        stats.pids_current = 3;
        let any = metrics(&stats).unwrap();
        let decoded = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(decoded.memory.usage, 4096);
        assert_eq!(decoded.pids.current, 3);
    }
}
