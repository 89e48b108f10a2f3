//! The start-up of one Bazaar container, phase by phase, from the shim's log.
//!
//! The shim writes slog records (`Nov 28 03:31:54.518 INFO VM started, elapsed_ms: 59, ...,
//! id: <id>, ...`, local time, millisecond precision) into containerd's log, guest console lines
//! included at debug level. [`events`] picks the records of one container id; [`Breakdown`] lines
//! them up with the wall-clock start and end of the `ctr run` that caused them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When the shim logged the milestones of one container's life (host wall clock).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ShimEvents {
    /// The first record of the shim for this id.
    pub first: Option<SystemTime>,
    pub vm_started: Option<SystemTime>,
    /// The guest console line `Run /init as init process`, as the shim received it.
    pub run_init: Option<SystemTime>,
    /// The same line's printk timestamp: seconds since the guest kernel started.
    pub run_init_guest_secs: Option<f64>,
    pub agent_ready: Option<SystemTime>,
    pub sandbox_ready: Option<SystemTime>,
    pub container_created: Option<SystemTime>,
    pub process_started: Option<SystemTime>,
    pub process_exited: Option<SystemTime>,
    pub sandbox_stopped: Option<SystemTime>,
}

/// The milestones of container `id` in `log` (containerd's log). `year` completes the
/// timestamps, which carry none.
pub fn events(log: &str, id: &str, year: i32) -> ShimEvents {
    let with_comma = format!("id: {id},");
    let at_end = format!("id: {id}");
    let mut ev = ShimEvents::default();
    for line in log.lines() {
        if !(line.contains(&with_comma) || line.ends_with(&at_end)) {
            continue;
        }
        let Some((time, msg)) = parse_record(line, year) else { continue };
        ev.first.get_or_insert(time);
        let slot = match msg {
            "VM started" => &mut ev.vm_started,
            "guest agent ready" => &mut ev.agent_ready,
            "sandbox ready" => &mut ev.sandbox_ready,
            "container created" => &mut ev.container_created,
            "process started" => &mut ev.process_started,
            "process exited" => &mut ev.process_exited,
            "sandbox stopped" => &mut ev.sandbox_stopped,
            "guest console" if line.contains("Run /init as init process") => {
                ev.run_init_guest_secs = printk_secs(line);
                &mut ev.run_init
            }
            _ => continue,
        };
        slot.get_or_insert(time);
    }
    ev
}

/// (time, message) of a slog-term record: `Mon DD HH:MM:SS.mmm LEVEL message, key: value...`.
fn parse_record(line: &str, year: i32) -> Option<(SystemTime, &str)> {
    let stamp = line.get(..19)?;
    let time = parse_stamp(stamp, year)?;
    let rest = line.get(20..)?;
    let (_level, rest) = rest.split_once(' ')?;
    let msg = rest.split(", ").next()?;
    Some((time, msg))
}

/// `Nov 28 03:31:54.457`, local time, in `year`.
pub fn parse_stamp(stamp: &str, year: i32) -> Option<SystemTime> {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let mon = MONTHS.iter().position(|m| stamp.get(..3) == Some(m))?;
    let day: i32 = stamp.get(4..6)?.trim().parse().ok()?;
    let hour: i32 = stamp.get(7..9)?.parse().ok()?;
    let min: i32 = stamp.get(10..12)?.parse().ok()?;
    let sec: i32 = stamp.get(13..15)?.parse().ok()?;
    if stamp.get(15..16)? != "." {
        return None;
    }
    let ms: u64 = stamp.get(16..19)?.parse().ok()?;
    // SAFETY: mktime(3) reads and normalises the zero-initialised tm we own.
    let secs = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = year - 1900;
        tm.tm_mon = mon as i32;
        tm.tm_mday = day;
        tm.tm_hour = hour;
        tm.tm_min = min;
        tm.tm_sec = sec;
        tm.tm_isdst = -1;
        libc::mktime(&mut tm)
    };
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_millis(ms))
}

/// The local calendar year of `t`.
pub fn local_year(t: SystemTime) -> i32 {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as libc::time_t;
    // SAFETY: localtime_r(3) fills the tm we own from a time_t we own.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm.tm_year + 1900
    }
}

/// `[    1.030512]` at the start of the console text of a `guest console` record.
fn printk_secs(line: &str) -> Option<f64> {
    let text = line.split("console: ").nth(1)?;
    let inner = text.strip_prefix('[')?.split(']').next()?;
    inner.trim().parse().ok()
}

/// One `ctr run` of Bazaar, phase by phase, in milliseconds. Consecutive phases add up to the
/// whole run; a phase is `None` when a record is missing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Breakdown {
    pub total: f64,
    /// `ctr` start to the shim's first record: ctr, containerd (snapshot, bundle), shim start.
    pub shim_start: Option<f64>,
    /// To "VM started": helpers, QEMU up and running.
    pub vm_create: Option<f64>,
    /// To the guest's `Run /init` (firmware, kernel decompression and boot).
    pub kernel_boot: Option<f64>,
    /// To "sandbox ready": agent start, vsock connect, health check, CreateSandbox.
    pub agent_ready: Option<f64>,
    /// `kernel_boot + agent_ready`, also known when the console is not logged.
    pub boot_to_ready: Option<f64>,
    /// To "process started": rootfs, CreateContainer, StartContainer.
    pub create_start: Option<f64>,
    /// To "process exited": the container's process itself (`true`).
    pub process_run: Option<f64>,
    /// From "process exited" to `ctr` returning: delete, sandbox and VM shut down.
    pub teardown: Option<f64>,
    /// The guest kernel's own clock at `Run /init`.
    pub kernel_clock: Option<f64>,
}

fn ms_between(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<f64> {
    let (a, b) = (a?, b?);
    Some(match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    })
}

impl Breakdown {
    pub fn new(ev: &ShimEvents, ctr_start: SystemTime, ctr_elapsed: Duration) -> Breakdown {
        let start = Some(ctr_start);
        let end = Some(ctr_start + ctr_elapsed);
        Breakdown {
            total: ctr_elapsed.as_secs_f64() * 1000.0,
            shim_start: ms_between(start, ev.first),
            vm_create: ms_between(ev.first, ev.vm_started),
            kernel_boot: ms_between(ev.vm_started, ev.run_init),
            agent_ready: ms_between(ev.run_init, ev.sandbox_ready),
            boot_to_ready: ms_between(ev.vm_started, ev.sandbox_ready),
            create_start: ms_between(ev.sandbox_ready, ev.process_started),
            process_run: ms_between(ev.process_started, ev.process_exited),
            teardown: ms_between(ev.process_exited, end),
            kernel_clock: ev.run_init_guest_secs.map(|s| s * 1000.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
time=\"2026-11-28T03:31:54Z\" level=info msg=\"starting task\"
Nov 28 03:31:54.457 INFO shim serving, pid: 11276, sandbox: b2, id: b2, namespace: default, runtime: io.containerd.bazaar.v2
Nov 28 03:31:54.457 INFO shim serving, pid: 11277, sandbox: b20, id: b20, namespace: default
Nov 28 03:31:54.518 INFO VM started, elapsed_ms: 59, hypervisor: qemu, sandbox: b2, id: b2, namespace: default
Nov 28 03:31:55.777 DEBG guest console, console: [    1.030512] Run /init as init process, process: guest, hypervisor: qemu, sandbox: b2, id: b2, namespace: default
Nov 28 03:31:55.967 INFO guest agent ready, elapsed_ms: 1449, guest_kernel: 6.1.192, sandbox: b2, id: b2, namespace: default
Nov 28 03:31:55.977 INFO sandbox ready, elapsed_ms: 1519, sandbox: b2, id: b2, namespace: default
Nov 28 03:31:56.196 INFO container created, container: b2, id: b2, namespace: default
Nov 28 03:31:56.221 INFO process started, pid: 33, exec: , container: b2, id: b2, namespace: default
Nov 28 03:31:56.264 INFO process exited, status: 0, exec: , container: b2, id: b2, namespace: default
Nov 28 03:31:56.300 INFO sandbox stopped, sandbox: b2, id: b2
";

    fn at(stamp: &str) -> SystemTime {
        parse_stamp(stamp, 2026).unwrap()
    }

    #[test]
    fn picks_the_records_of_one_id() {
        let ev = events(LOG, "b2", 2026);
        assert_eq!(ev.first, Some(at("Nov 28 03:31:54.457")));
        assert_eq!(ev.vm_started, Some(at("Nov 28 03:31:54.518")));
        assert_eq!(ev.run_init, Some(at("Nov 28 03:31:55.777")));
        assert_eq!(ev.run_init_guest_secs, Some(1.030512));
        assert_eq!(ev.sandbox_ready, Some(at("Nov 28 03:31:55.977")));
        assert_eq!(ev.process_exited, Some(at("Nov 28 03:31:56.264")));
        assert_eq!(ev.sandbox_stopped, Some(at("Nov 28 03:31:56.300")));
        let other = events(LOG, "b20", 2026);
        assert_eq!(other.first, Some(at("Nov 28 03:31:54.457")));
        assert_eq!(other.vm_started, None);
    }

    #[test]
    fn phases_add_up_to_the_total() {
        let ev = events(LOG, "b2", 2026);
        let start = at("Nov 28 03:31:54.300");
        let b = Breakdown::new(&ev, start, Duration::from_millis(2100));
        let phases = [
            b.shim_start,
            b.vm_create,
            b.kernel_boot,
            b.agent_ready,
            b.create_start,
            b.process_run,
            b.teardown,
        ];
        let sum: f64 = phases.iter().map(|p| p.unwrap()).sum();
        assert!((sum - 2100.0).abs() < 1e-6, "{b:?}");
        assert!((b.shim_start.unwrap() - 157.0).abs() < 1e-6);
        assert!((b.kernel_boot.unwrap() - 1259.0).abs() < 1e-6);
        assert!((b.boot_to_ready.unwrap() - 1459.0).abs() < 1e-6);
        assert!((b.teardown.unwrap() - 136.0).abs() < 1e-6);
        assert!((b.kernel_clock.unwrap() - 1030.512).abs() < 1e-6);
    }

    #[test]
    fn stamps_and_years() {
        let t = at("Jan 02 00:00:01.250");
        assert_eq!(local_year(t), 2026);
        assert_eq!(
            t.duration_since(at("Jan 01 23:59:59.000")).unwrap(),
            Duration::from_millis(2250)
        );
        assert!(parse_stamp("Foo 28 03:31:54.457", 2026).is_none());
        assert!(parse_stamp("Nov 28 03:31:54,457", 2026).is_none());
    }
}
