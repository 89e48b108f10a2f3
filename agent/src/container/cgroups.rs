//! Container cgroups (cgroup v2 only), managed by the agent: `<root>/<cid>` by default.
//!
//! The helper joins a container's cgroup by writing `0` to its `cgroup.procs` before it forks,
//! so every container process starts inside it.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use oci_spec::runtime::LinuxResources;

use crate::error::Error;

/// `statfs` magic of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Controllers the agent enables for container cgroups when the kernel has them.
const CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

/// The cgroup v2 hierarchy the agent creates container cgroups in.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    root: PathBuf,
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

/// One file write of a resource update.
#[derive(Debug, PartialEq, Eq)]
pub struct Write {
    pub file: String,
    pub value: String,
    /// Whether a missing file (controller) is an error; otherwise the write is skipped.
    pub required: bool,
}

/// Counters for StatsContainer; `u64::MAX` for an unlimited limit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
    pub memory_oom_kill_events: u64,
}

impl CgroupRoot {
    /// The hierarchy at `root` if it is a cgroup2 mount.
    pub fn detect(root: &Path) -> Option<CgroupRoot> {
        let stat = nix::sys::statfs::statfs(root).ok()?;
        (stat.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC)
            .then(|| CgroupRoot { root: root.to_path_buf() })
    }

    /// Creates (or adopts) the cgroup at `relative`, enabling the available controllers on the way.
    pub fn create(&self, relative: &Path) -> anyhow::Result<Cgroup> {
        let mut current = self.root.clone();
        for component in relative.components() {
            enable_controllers(&current);
            current.push(component);
            match std::fs::create_dir(&current) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("mkdir {}", current.display()))
                }
            }
        }
        Ok(Cgroup { path: current })
    }
}

/// Enables every available controller of [`CONTROLLERS`] for the children of `dir`, one by one
/// (a write naming one unavailable controller would fail as a whole).
pub fn enable_controllers(dir: &Path) {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for controller in CONTROLLERS {
        let has = |list: &str| list.split_whitespace().any(|c| c == controller);
        if has(&available) && !has(&enabled) {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"));
        }
    }
}

/// The cgroup of a container relative to the root: `linux.cgroupsPath` when it is a plain path,
/// else the container id. (A systemd-style `slice:prefix:name` has no meaning in the guest.)
pub fn relative_path(container_id: &str, cgroups_path: Option<&Path>) -> Result<PathBuf, Error> {
    let Some(path) = cgroups_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(PathBuf::from(container_id));
    };
    if path.to_string_lossy().contains(':') {
        return Ok(PathBuf::from(container_id));
    }
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => relative.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::InvalidArgument(format!(
                    "linux.cgroupsPath {} must not contain '..'",
                    path.display()
                )))
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Ok(PathBuf::from(container_id));
    }
    Ok(relative)
}

/// The file writes that apply `resources`.
pub fn resource_writes(resources: &LinuxResources) -> Result<Vec<Write>, Error> {
    let mut writes = Vec::new();
    let mut add = |file: &str, value: String, required: bool| {
        writes.push(Write { file: file.to_string(), value, required })
    };
    if let Some(memory) = resources.memory() {
        let limit = memory.limit().filter(|l| *l != 0);
        if let Some(limit) = limit {
            add("memory.max", max_or(limit), true);
        }
        if let Some(swap) = memory.swap().filter(|s| *s != 0) {
            // OCI's swap is memory+swap; cgroup v2 limits swap alone.
            let value = match limit {
                _ if swap < 0 => "max".to_string(),
                Some(limit) if limit > 0 => {
                    if swap < limit {
                        return Err(Error::InvalidArgument(format!(
                            "memory.swap ({swap}) must not be below memory.limit ({limit})"
                        )));
                    }
                    (swap - limit).to_string()
                }
                _ => swap.to_string(),
            };
            add("memory.swap.max", value, false);
        }
        if let Some(reservation) = memory.reservation().filter(|r| *r > 0) {
            add("memory.low", reservation.to_string(), false);
        }
    }
    if let Some(cpu) = resources.cpu() {
        if cpu.quota().is_some() || cpu.period().is_some() {
            let period = cpu.period().filter(|p| *p > 0).unwrap_or(100_000);
            let quota = cpu.quota().filter(|q| *q > 0).map_or("max".to_string(), |q| q.to_string());
            add("cpu.max", format!("{quota} {period}"), true);
        }
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            add("cpu.weight", shares_to_weight(shares).to_string(), false);
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            add("cpuset.cpus", cpus.to_string(), true);
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            add("cpuset.mems", mems.to_string(), true);
        }
    }
    if let Some(pids) = resources.pids() {
        add("pids.max", max_or(pids.limit()), true);
    }
    if let Some(io) = resources.block_io() {
        // The guest kernel has no BFQ, so runc's fallback: io.weight, converted.
        if let Some(weight) = io.weight().filter(|w| *w != 0) {
            add("io.weight", blkio_weight_to_io_weight(weight).to_string(), false);
        }
        let throttles = [
            ("rbps", io.throttle_read_bps_device()),
            ("wbps", io.throttle_write_bps_device()),
            ("riops", io.throttle_read_iops_device()),
            ("wiops", io.throttle_write_iops_device()),
        ];
        for (key, devices) in throttles {
            for device in devices.iter().flatten() {
                // Not required: the devices are named by the host's numbers, which the guest
                // usually does not have (its root is virtio-fs).
                add(
                    "io.max",
                    format!("{}:{} {key}={}", device.major(), device.minor(), device.rate()),
                    false,
                );
            }
        }
    }
    for (file, value) in resources.unified().iter().flatten() {
        if file.contains('/') || file.starts_with('.') || file.is_empty() {
            return Err(Error::InvalidArgument(format!("invalid unified cgroup file {file:?}")));
        }
        add(file, value.clone(), true);
    }
    Ok(writes)
}

/// A limit value: positive numbers as they are, anything else unlimited.
fn max_or(value: i64) -> String {
    if value > 0 {
        value.to_string()
    } else {
        "max".to_string()
    }
}

/// cgroup v1 blkio.weight (10..1000) to cgroup v2 io.weight (1..10000), as runc converts.
pub fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    let weight = u64::from(weight.clamp(10, 1000));
    1 + (weight - 10) * 9999 / 990
}

/// cgroup v1 cpu.shares (2..262144) to cgroup v2 cpu.weight (1..10000), as runc converts.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

impl Cgroup {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Applies resource limits and the device allowlist; returns the optional files that were
    /// skipped for lack of a controller.
    pub fn apply(&self, resources: &LinuxResources) -> Result<Vec<String>, Error> {
        if let Some(devices) = resources.devices() {
            super::device_filter::apply(&self.path, devices).map_err(|err| {
                Error::FailedPrecondition(format!(
                    "the device allowlist cannot be enforced: {err:#}"
                ))
            })?;
        }
        let mut skipped = Vec::new();
        for write in resource_writes(resources)? {
            let file = self.path.join(&write.file);
            if !file.exists() {
                if write.required {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot set {} = {}: the guest kernel has no such cgroup file (controller not available)",
                        write.file, write.value
                    )));
                }
                skipped.push(write.file);
                continue;
            }
            match std::fs::write(&file, &write.value) {
                Ok(()) => {}
                // A device the guest does not have.
                Err(err) if !write.required && err.raw_os_error() == Some(libc::ENODEV) => {
                    skipped.push(format!("{} ({})", write.file, write.value));
                }
                Err(err) => {
                    return Err(anyhow::Error::from(err)
                        .context(format!("write {} to {}", write.value, file.display()))
                        .into())
                }
            }
        }
        Ok(skipped)
    }

    /// Freezes or thaws every process of the cgroup and waits until the kernel says it is done.
    pub async fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let value = if frozen { "1" } else { "0" };
        let file = self.path.join("cgroup.freeze");
        std::fs::write(&file, value)
            .with_context(|| format!("write {value} to {}", file.display()))?;
        let events = self.path.join("cgroup.events");
        for _ in 0..200 {
            let content = std::fs::read_to_string(&events).unwrap_or_default();
            if parse_flat_keyed(&content).get("frozen") == Some(&u64::from(frozen)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("the cgroup {} did not reach frozen={value}", self.path.display())
    }

    /// The pids in the cgroup (in the agent's PID namespace).
    pub fn pids(&self) -> anyhow::Result<Vec<u32>> {
        let file = self.procs_file();
        let content =
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        Ok(content.lines().filter_map(|line| line.trim().parse().ok()).collect())
    }

    /// Sends `signal` to every process of the cgroup; processes that exit meanwhile are ignored.
    pub fn signal_all(&self, signal: i32) -> anyhow::Result<()> {
        for pid in self.pids()? {
            match crate::sys::kill(pid as i32, signal) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
                Err(err) => return Err(err).with_context(|| format!("kill({pid}, {signal})")),
            }
        }
        Ok(())
    }

    /// Kills every process of the cgroup (`cgroup.kill` where the kernel has it).
    pub fn kill_all(&self) -> anyhow::Result<()> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            return std::fs::write(&kill, "1")
                .with_context(|| format!("write 1 to {}", kill.display()));
        }
        self.signal_all(libc::SIGKILL)
    }

    /// Removes the (empty) cgroup, retrying while its last processes are still going away.
    pub async fn remove(&self) -> anyhow::Result<()> {
        for _ in 0..100 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("rmdir {}", self.path.display()))
                }
            }
        }
        anyhow::bail!("the cgroup {} stayed busy", self.path.display())
    }

    /// Reads the counters; missing files (controllers) read as zero.
    pub fn stats(&self) -> Stats {
        let read = |file: &str| std::fs::read_to_string(self.path.join(file)).unwrap_or_default();
        let cpu = parse_flat_keyed(&read("cpu.stat"));
        let events = parse_flat_keyed(&read("memory.events"));
        let get = |map: &HashMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
        Stats {
            cpu_usage_usec: get(&cpu, "usage_usec"),
            cpu_user_usec: get(&cpu, "user_usec"),
            cpu_system_usec: get(&cpu, "system_usec"),
            memory_usage_bytes: parse_value(&read("memory.current")),
            memory_limit_bytes: parse_value(&read("memory.max")),
            pids_current: parse_value(&read("pids.current")),
            pids_limit: parse_value(&read("pids.max")),
            memory_oom_kill_events: get(&events, "oom_kill"),
        }
    }
}

/// Parses a flat-keyed cgroup file (`key value` per line).
pub fn parse_flat_keyed(content: &str) -> HashMap<String, u64> {
    content
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Parses a single-value cgroup file: a number, `max` (u64::MAX), or nothing (0).
pub fn parse_value(content: &str) -> u64 {
    match content.trim() {
        "max" => u64::MAX,
        value => value.parse().unwrap_or(0),
    }
}

#[cfg(test)]
#[path = "cgroups_tests.rs"]
mod tests;
