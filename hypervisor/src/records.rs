//! Recorded helper processes: their identity (PID plus start time) and ending them after the
//! process that started them is gone.

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ProcessRecord;

/// How long `kill_recorded` lets a process handle SIGTERM before it sends SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(1);
/// How long `kill_recorded` waits for SIGKILLed processes to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// The start time of `pid` (field 22 of /proc/<pid>/stat, in clock ticks since boot).
pub fn process_start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat).map(|s| s.start_time).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("unparsable /proc/{pid}/stat"))
    })
}

/// The fields of /proc/<pid>/stat this crate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    start_time: u64,
}

/// Parses /proc/<pid>/stat. The command name (field 2) may contain spaces and parentheses, so
/// the fields are counted from its closing parenthesis, the last one in the line.
fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); field 22 is the 20th field of `rest`.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Whether `record` still names the live process it was recorded for. A zombie counts as gone:
/// it runs no code and its parent (or init) reaps it.
fn is_alive(record: &ProcessRecord) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", record.pid)) {
        Ok(text) => match parse_stat(&text) {
            Some(stat) => stat.start_time == record.start_time && stat.state != 'Z',
            None => false,
        },
        Err(_) => false,
    }
}

/// Ends the recorded processes, typically after the shim that started them died: SIGTERM,
/// then SIGKILL after a short grace period, and waits until they are gone. A process is only
/// signalled while its PID still has the recorded start time, so a recycled PID is never hit.
/// Blocks for at most about six seconds.
pub fn kill_recorded(records: &[ProcessRecord]) {
    let live = |records: &[ProcessRecord]| -> Vec<ProcessRecord> {
        records.iter().filter(|r| r.pid > 1 && is_alive(r)).cloned().collect()
    };
    let signal_all = |records: &[ProcessRecord], signal: Signal| {
        for record in records {
            // The start time is checked right before signalling; the window between the check
            // and kill() is far shorter than any PID reuse cycle.
            if is_alive(record) {
                let _ = kill(Pid::from_raw(record.pid as i32), signal);
            }
        }
    };
    let wait_gone = |records: &[ProcessRecord], timeout: Duration| -> Vec<ProcessRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = live(records);
            if remaining.is_empty() || Instant::now() >= deadline {
                return remaining;
            }
            thread::sleep(POLL);
        }
    };

    let targets = live(records);
    if targets.is_empty() {
        return;
    }
    signal_all(&targets, Signal::SIGTERM);
    let remaining = wait_gone(&targets, TERM_GRACE);
    if remaining.is_empty() {
        return;
    }
    signal_all(&remaining, Signal::SIGKILL);
    wait_gone(&remaining, KILL_WAIT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 3 0 \
                    987654 123456 789 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0";
        assert_eq!(parse_stat(stat), Some(Stat { state: 'S', start_time: 987654 }));
        assert_eq!(parse_stat("1 (init) S 0"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_start_time_is_stable() {
        let pid = std::process::id();
        let first = process_start_time(pid).unwrap();
        assert_eq!(first, process_start_time(pid).unwrap());
        assert!(is_alive(&ProcessRecord { name: "self".into(), pid, start_time: first }));
        assert!(!is_alive(&ProcessRecord { name: "self".into(), pid, start_time: first + 1 }));
    }

    #[test]
    fn kill_recorded_ends_a_matching_process_and_spares_a_mismatch() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start_time = process_start_time(pid).unwrap();

        // A wrong start time: the process must survive.
        kill_recorded(&[ProcessRecord { name: "sleep".into(), pid, start_time: start_time + 1 }]);
        assert!(child.try_wait().unwrap().is_none());

        // Reap in parallel so the zombie disappears as soon as it dies.
        let reaper = thread::spawn(move || child.wait().unwrap());
        kill_recorded(&[ProcessRecord { name: "sleep".into(), pid, start_time }]);
        let status = reaper.join().unwrap();
        assert!(!status.success());
    }
}
