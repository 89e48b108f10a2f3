//! One e2e test at a time on this machine.
//!
//! cargo runs test binaries one after another but the tests of one binary on several threads;
//! an exclusive `flock` on a well-known file serialises them all, across threads (each guard opens
//! the file anew, and flock locks belong to the open file) and across processes.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;

use anyhow::{Context, Result};

/// The lock file shared by every e2e test run on the machine.
pub const LOCK_PATH: &str = "/tmp/bazaar-e2e.lock";

/// Held for the whole of one e2e test; released on drop (closing the file releases the lock).
pub struct SuiteLock {
    _file: File,
}

impl SuiteLock {
    /// Blocks until no other e2e test holds the lock.
    pub fn acquire() -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .with_context(|| format!("cannot open {LOCK_PATH}"))?;
        loop {
            // SAFETY: flock(2) on a descriptor that `file` owns for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(SuiteLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("cannot lock {LOCK_PATH}"));
            }
        }
    }
}
