//! Running a command under a pseudo-terminal, as `ctr run -t` / `ctr task exec -t` need one.
//!
//! util-linux `script -qec '<shell command>' /dev/null` runs the command in a new session whose
//! controlling terminal is a fresh pty, copies what it prints to script's stdout (with the pty's
//! `\r\n` line ends) and exits with its status. A test sets the window size first in the same
//! shell (`stty cols 123 rows 45; ctr ...`): ctr then passes that size on with ResizePty.

use std::process::Command;

/// `script -qec <shell> /dev/null`: `shell` runs under `sh -c` in a pseudo-terminal.
pub fn script_command(shell: &str) -> Command {
    let mut cmd = Command::new("script");
    cmd.arg("-q").arg("-e").arg("-c").arg(shell).arg("/dev/null");
    cmd
}

/// Runs `shell` under [`script_command`] and returns what it printed and its status.
///
/// script's own stdin is a pipe kept open until the command ends: at EOF of its stdin script
/// would send the terminal an end-of-file character, which a program in raw mode (ctr -t) passes
/// on to the container as a NUL byte.
pub fn run_in_pty(
    shell: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<crate::process::Output> {
    let bg = crate::process::Background::spawn(script_command(shell), true)?;
    Ok(bg.wait(timeout))
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A command line for a shell, every word quoted.
pub fn sh_join(words: &[String]) -> String {
    words.iter().map(|w| sh_quote(w)).collect::<Vec<_>>().join(" ")
}

/// A `Command`'s program and arguments, quoted as one shell command line.
pub fn command_line(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    sh_join(&words)
}

/// Terminal output as plain lines: `\r\n` (and stray `\r`) become `\n`.
pub fn normalize(output: &str) -> String {
    output.replace("\r\n", "\n").replace('\r', "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quotes_for_sh() {
        assert_eq!(sh_quote("plain/path-1"), "plain/path-1");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn script_gives_a_terminal_of_the_size_asked() {
        if which("script").is_none() {
            eprintln!("note: util-linux script missing; skipping");
            return;
        }
        let shell = "stty cols 123 rows 45; stty size; test -t 0 && echo tty; exit 3";
        let out = run_in_pty(shell, Duration::from_secs(20)).unwrap();
        assert_eq!(out.code, Some(3), "{}", out.describe());
        assert_eq!(normalize(&out.stdout), "45 123\ntty\n", "{}", out.describe());
    }

    fn which(prog: &str) -> Option<std::path::PathBuf> {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    }
}
