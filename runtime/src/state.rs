//! What a sandbox records on disk so that `containerd-shim-bazaar-v2 delete` can clean up after a
//! shim that died: the helper processes it started, by PID and start time.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bazaar_hypervisor::ProcessRecord;
use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SandboxState {
    pub sandbox_id: String,
    pub hypervisor: String,
    pub processes: Vec<ProcessRecord>,
}

fn path(run_dir: &Path) -> PathBuf {
    run_dir.join(STATE_FILE)
}

/// Writes the state atomically (temp file + rename), so a crash never leaves half a file.
pub fn save(run_dir: &Path, state: &SandboxState) -> Result<()> {
    let target = path(run_dir);
    let temp = run_dir.join(format!(".{STATE_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(state).context("serialising sandbox state")?;
    std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, &target).with_context(|| format!("renaming to {}", target.display()))
}

/// Reads the state; `None` when the sandbox never got as far as writing it.
pub fn load(run_dir: &Path) -> Result<Option<SandboxState>> {
    let file = path(run_dir);
    match std::fs::read(&file) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", file.display()))?,
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let state = SandboxState {
            sandbox_id: "s".into(),
            hypervisor: "qemu".into(),
            processes: vec![ProcessRecord { name: "qemu".into(), pid: 12, start_time: 99 }],
        };
        save(dir.path(), &state).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.sandbox_id, "s");
        assert_eq!(loaded.processes.len(), 1);
        assert_eq!((loaded.processes[0].pid, loaded.processes[0].start_time), (12, 99));
    }
}
