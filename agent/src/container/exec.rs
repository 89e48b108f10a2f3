//! Finding the program of a container process (`$PATH` lookup inside the new root) and
//! replacing the process with it.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::sync::{ErrorCode, SetupError};

/// `PATH` when the process environment has none (the OCI/runc default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a path turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    Missing,
    /// Exists but is a directory or lacks execute permission.
    NotExecutable,
    Executable,
}

/// Resolves `command` like `execvp` (and Go's `exec.LookPath`, whose messages runc and
/// containerd users know): a name with a `/` is taken as is (relative to the working
/// directory), any other name is searched in `path_var`.
pub fn lookup(
    command: &str,
    path_var: &str,
    probe: impl Fn(&Path) -> Candidate,
) -> Result<PathBuf, SetupError> {
    if command.is_empty() {
        return Err(SetupError::new(ErrorCode::InvalidArgument, "process.args[0] is empty"));
    }
    if command.contains('/') {
        let path = PathBuf::from(command);
        return match probe(&path) {
            Candidate::Executable => Ok(path),
            Candidate::NotExecutable => Err(SetupError::new(
                ErrorCode::PermissionDenied,
                format!("exec: {command:?}: permission denied"),
            )),
            Candidate::Missing => Err(SetupError::new(
                ErrorCode::NotFound,
                format!("exec: {command:?}: stat {command}: no such file or directory"),
            )),
        };
    }
    let mut denied = false;
    for dir in path_var.split(':') {
        // An empty PATH entry means the working directory.
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(command);
        match probe(&candidate) {
            Candidate::Executable => return Ok(candidate),
            Candidate::NotExecutable => denied = true,
            Candidate::Missing => {}
        }
    }
    if denied {
        return Err(SetupError::new(
            ErrorCode::PermissionDenied,
            format!("exec: {command:?}: permission denied"),
        ));
    }
    Err(SetupError::new(
        ErrorCode::NotFound,
        format!("exec: {command:?}: executable file not found in $PATH"),
    ))
}

/// Probes the real filesystem as the current user: a regular file that `access(X_OK)` allows.
pub fn probe(path: &Path) -> Candidate {
    match std::fs::metadata(path) {
        Err(_) => Candidate::Missing,
        Ok(meta) if !meta.is_file() => Candidate::NotExecutable,
        Ok(_) => match nix::unistd::access(path, nix::unistd::AccessFlags::X_OK) {
            Ok(()) => Candidate::Executable,
            Err(_) => Candidate::NotExecutable,
        },
    }
}

/// The resolved program with its argv and environment, ready for `execve`.
#[derive(Debug)]
pub struct Program {
    pub path: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
}

/// Replaces this process with the program; returns only on failure.
pub fn exec(program: &Program) -> anyhow::Error {
    let err = match nix::unistd::execve(&program.path, &program.argv, &program.env) {
        Err(err) => err,
        Ok(never) => match never {},
    };
    let shown = program.path.to_string_lossy();
    let code = match err {
        nix::errno::Errno::ENOENT => ErrorCode::NotFound,
        nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => ErrorCode::PermissionDenied,
        _ => ErrorCode::FailedPrecondition,
    };
    SetupError::new(code, format!("exec {shown:?}: {}", err.desc())).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(
        executables: &'static [&'static str],
        others: &'static [&'static str],
    ) -> impl Fn(&Path) -> Candidate {
        move |path: &Path| {
            let path = path.to_str().unwrap_or_default();
            if executables.contains(&path) {
                Candidate::Executable
            } else if others.contains(&path) {
                Candidate::NotExecutable
            } else {
                Candidate::Missing
            }
        }
    }

    #[test]
    fn searches_path_in_order() {
        let probe = fake(&["/usr/bin/sh", "/bin/sh"], &[]);
        assert_eq!(
            lookup("sh", "/usr/local/bin:/usr/bin:/bin", &probe).unwrap(),
            PathBuf::from("/usr/bin/sh")
        );
    }

    #[test]
    fn missing_command_names_it() {
        let err = lookup("nosuchcmd", DEFAULT_PATH, fake(&[], &[])).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.message, "exec: \"nosuchcmd\": executable file not found in $PATH");
    }

    #[test]
    fn slash_paths_are_not_searched() {
        let probe = fake(&["/bin/sh", "./run.sh"], &["/etc"]);
        assert_eq!(lookup("/bin/sh", "/nowhere", &probe).unwrap(), PathBuf::from("/bin/sh"));
        assert_eq!(lookup("./run.sh", "", &probe).unwrap(), PathBuf::from("./run.sh"));
        let missing = lookup("/bin/nope", DEFAULT_PATH, &probe).unwrap_err();
        assert_eq!(missing.code, ErrorCode::NotFound);
        assert!(missing.message.contains("/bin/nope"));
        let denied = lookup("/etc", DEFAULT_PATH, &probe).unwrap_err();
        assert_eq!(denied.code, ErrorCode::PermissionDenied);
    }

    #[test]
    fn non_executable_matches_are_permission_errors() {
        let probe = fake(&[], &["/bin/data"]);
        let err = lookup("data", "/bin", probe).unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
    }

    #[test]
    fn empty_path_entry_is_the_working_directory() {
        let probe = fake(&["./tool"], &[]);
        assert_eq!(lookup("tool", "/bin:", probe).unwrap(), PathBuf::from("./tool"));
    }

    #[test]
    fn empty_command_is_invalid() {
        assert_eq!(
            lookup("", DEFAULT_PATH, fake(&[], &[])).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
}
