//! containerd's event stream as `ctr events` prints it, collected in the background.
//!
//! `ctr events` runs until killed and prints one line per event:
//! `<timestamp> <namespace> <topic> <json>`, e.g.
//! `2024-01-01 00:00:00.1 +0000 UTC default /tasks/exit {"container_id":"c","id":"c",...}`.
//! [`EventWatcher::start`] returns only once the subscription is live (it labels the namespace
//! and waits for that `/namespaces/update` event), so no event of the test is missed.
//! The watcher's `ctr` is stopped by its PID on [`EventWatcher::stop`] or drop.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::containerd::{PrivateContainerd, NAMESPACE};
use crate::process::{Background, Output};

/// One event.
#[derive(Debug, Clone)]
pub struct Event {
    pub namespace: String,
    /// `/tasks/exit`, `/tasks/paused`, ...
    pub topic: String,
    /// The event's fields, as ctr prints them (JSON; `Value::Null` if unparsable).
    pub body: Value,
    /// The line as printed.
    pub line: String,
}

impl Event {
    /// A string field of the body (`container_id`, `exec_id`, `id`).
    pub fn str(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }

    /// A number field of the body (`pid`, `exit_status`), absent fields read as 0 as protobuf
    /// leaves zero values out of the JSON.
    pub fn num(&self, field: &str) -> u64 {
        self.body.get(field).and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn container_id(&self) -> Option<&str> {
        self.str("container_id")
    }
}

/// Parses one `ctr events` line.
pub fn parse_line(line: &str) -> Option<Event> {
    // The timestamp holds spaces but no " /"; the topic is the first word starting with '/'.
    let at = line.find(" /")?;
    let namespace = line[..at].rsplit(' ').next()?.to_string();
    let rest = &line[at + 1..];
    let (topic, body) = match rest.find(' ') {
        Some(sp) => (&rest[..sp], rest[sp + 1..].trim()),
        None => (rest, ""),
    };
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    Some(Event { namespace, topic: topic.to_string(), body, line: line.to_string() })
}

pub struct EventWatcher {
    ctr: Background,
}

impl EventWatcher {
    /// Starts `ctr events` against `containerd` and waits until it receives events.
    pub fn start(containerd: &PrivateContainerd) -> Result<EventWatcher> {
        let mut cmd = containerd.ctr_command();
        cmd.arg("events");
        let watcher = EventWatcher { ctr: Background::spawn(cmd, false)? };
        let start = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            let label = format!("bazaar-tests-sync={n}");
            let out = containerd
                .ctr(&["namespaces", "label", NAMESPACE, &label], Duration::from_secs(30))?;
            if !out.success() {
                bail!("cannot label the namespace to sync the event stream: {}", out.describe());
            }
            let seen = |w: &EventWatcher| {
                w.events().iter().any(|e| {
                    e.topic == "/namespaces/update"
                        && e.body.pointer("/labels/bazaar-tests-sync").and_then(Value::as_str)
                            == Some(&n.to_string())
                })
            };
            let wait = Instant::now();
            while wait.elapsed() < Duration::from_millis(500) {
                if seen(&watcher) {
                    return Ok(watcher);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "`ctr events` saw no event within 30 s; it printed:\n{}\n{}",
                    watcher.ctr.stdout_now(),
                    watcher.ctr.stderr_now()
                );
            }
        }
    }

    /// Every event received so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.ctr.stdout_now().lines().filter_map(parse_line).collect()
    }

    /// The events about container `id` (task events carry `container_id`).
    pub fn events_of(&self, id: &str) -> Vec<Event> {
        self.events().into_iter().filter(|e| e.container_id() == Some(id)).collect()
    }

    /// Waits up to `timeout` for an event matching `pred`; returns the first such one.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for an event of `topic` about container `id`.
    pub fn wait_for_topic(&self, id: &str, topic: &str, timeout: Duration) -> Option<Event> {
        self.wait_for(timeout, |e| e.topic == topic && e.container_id() == Some(id))
    }

    /// Everything received, one event a line, for assertion messages.
    pub fn dump(&self) -> String {
        self.ctr.stdout_now()
    }

    /// Stops `ctr events` (by its PID) and returns its output.
    pub fn stop(self) -> Output {
        self.ctr.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ctr_event_lines() {
        let line = "2026-11-28 04:03:30.869037061 +0000 UTC default /tasks/exit \
                    {\"container_id\":\"x1\",\"id\":\"e3\",\"pid\":32594,\"exit_status\":3}";
        let e = parse_line(line).unwrap();
        assert_eq!(e.namespace, "default");
        assert_eq!(e.topic, "/tasks/exit");
        assert_eq!(e.container_id(), Some("x1"));
        assert_eq!(e.str("id"), Some("e3"));
        assert_eq!(e.num("exit_status"), 3);
        assert_eq!(e.num("absent"), 0);
        let e = parse_line(
            "2026-11-28 04:03:30.79 +0000 UTC default /tasks/paused {\"container_id\":\"x1\"}",
        )
        .unwrap();
        assert_eq!(e.topic, "/tasks/paused");
        assert!(parse_line("no topic here").is_none());
    }
}
