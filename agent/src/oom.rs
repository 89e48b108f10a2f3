//! OOM notifications: one inotify instance watches every container's `memory.events`, whose
//! modification the kernel signals when a counter changes; an increased `oom_kill` count becomes
//! an event for GetOOMEvent. A blocking thread reads inotify, so nothing polls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use slog::{debug, warn, Logger};
use tokio::sync::mpsc;

use crate::container::cgroups::parse_flat_keyed;

struct Watched {
    container_id: String,
    events_file: PathBuf,
    oom_kills: u64,
}

pub struct OomMonitor {
    inotify: Inotify,
    watches: Mutex<HashMap<WatchDescriptor, Watched>>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn oom_kills(events_file: &Path) -> u64 {
    std::fs::read_to_string(events_file)
        .map(|text| parse_flat_keyed(&text).get("oom_kill").copied().unwrap_or(0))
        .unwrap_or(0)
}

impl OomMonitor {
    /// Starts the monitor and its reader thread.
    pub fn start(log: Logger) -> anyhow::Result<Arc<OomMonitor>> {
        let inotify =
            Inotify::init(InitFlags::IN_CLOEXEC).context("inotify_init for OOM events")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let monitor = Arc::new(OomMonitor {
            inotify,
            watches: Mutex::new(HashMap::new()),
            events: tokio::sync::Mutex::new(rx),
        });
        let reader = monitor.clone();
        std::thread::Builder::new()
            .name("oom-monitor".into())
            .spawn(move || reader.read_loop(&tx, &log))
            .context("starting the OOM monitor thread")?;
        Ok(monitor)
    }

    fn read_loop(&self, tx: &mpsc::UnboundedSender<String>, log: &Logger) {
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    warn!(log, "OOM monitor stopped"; "error" => %err);
                    return;
                }
            };
            for event in events {
                let mut watches = lock(&self.watches);
                let Some(watched) = watches.get_mut(&event.wd) else { continue };
                let now = oom_kills(&watched.events_file);
                if now > watched.oom_kills {
                    watched.oom_kills = now;
                    debug!(log, "container OOM-killed"; "container" => &watched.container_id);
                    let _ = tx.send(watched.container_id.clone());
                }
            }
        }
    }

    /// Watches the container's cgroup for OOM kills.
    pub fn watch(&self, container_id: &str, cgroup_dir: &Path) -> anyhow::Result<()> {
        let events_file = cgroup_dir.join("memory.events");
        let wd = self
            .inotify
            .add_watch(&events_file, AddWatchFlags::IN_MODIFY)
            .with_context(|| format!("watching {}", events_file.display()))?;
        let oom_kills = oom_kills(&events_file);
        lock(&self.watches)
            .insert(wd, Watched { container_id: container_id.to_string(), events_file, oom_kills });
        Ok(())
    }

    /// Stops watching the container (its cgroup is about to go).
    pub fn unwatch(&self, container_id: &str) {
        let mut watches = lock(&self.watches);
        let gone: Vec<WatchDescriptor> = watches
            .iter()
            .filter(|(_, watched)| watched.container_id == container_id)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            watches.remove(&wd);
            // The watch also disappears with the cgroup; failing to remove it is harmless.
            let _ = self.inotify.rm_watch(wd);
        }
    }

    /// The next OOM-killed container's id; `None` once the monitor has stopped.
    pub async fn next(&self) -> Option<String> {
        self.events.lock().await.recv().await
    }
}
