//! Line-oriented forwarding of a child's output (the guest serial console, helper diagnostics)
//! into slog.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use slog::{debug, info, Logger};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc::UnboundedSender;

/// Lines longer than this are split, so a guest printing without newlines cannot grow memory.
const MAX_LINE: usize = 4096;
/// How many lines of a helper's output are kept for error messages.
const TAIL_LINES: usize = 20;

/// Receives every guest console line; a test hook and an option for callers that want the
/// console besides the log.
pub type ConsoleSink = UnboundedSender<String>;

/// Reads one line of at most `max` bytes (without its `\n`, trailing `\r` removed). Returns
/// `None` at end of input.
pub async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<String>> {
    let mut line: Vec<u8> = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            break;
        }
        let room = max - line.len();
        let window = &buf[..buf.len().min(room)];
        if let Some(pos) = window.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&window[..pos]);
            reader.consume(pos + 1);
            break;
        }
        let taken = window.len();
        line.extend_from_slice(window);
        reader.consume(taken);
        if line.len() >= max {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Forwards the guest serial console to `logger` (key `console`) and to `sink`, until the
/// output closes (QEMU exited).
pub async fn forward_console<R: AsyncRead + Unpin>(
    output: R,
    logger: Logger,
    sink: Option<ConsoleSink>,
) {
    let mut reader = BufReader::new(output);
    while let Ok(Some(line)) = read_line_capped(&mut reader, MAX_LINE).await {
        debug!(logger, "guest console"; "console" => &line);
        if let Some(sink) = &sink {
            let _ = sink.send(line);
        }
    }
}

/// The last lines a process printed, for error messages.
#[derive(Clone, Default)]
pub struct OutputTail(Arc<Mutex<VecDeque<String>>>);

impl OutputTail {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines joined with " | ", or a note that there were none.
    pub fn summary(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if lines.is_empty() {
            "no output".to_string()
        } else {
            lines.iter().map(String::as_str).collect::<Vec<_>>().join(" | ")
        }
    }
}

/// Logs a helper's output lines (key `output`) and keeps the last ones in `tail`.
pub async fn forward_output<R: AsyncRead + Unpin>(output: R, logger: Logger, tail: OutputTail) {
    let mut reader = BufReader::new(output);
    while let Ok(Some(line)) = read_line_capped(&mut reader, MAX_LINE).await {
        if line.trim().is_empty() {
            continue;
        }
        info!(logger, "helper output"; "output" => &line);
        tail.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_caps_their_length() {
        let input: &[u8] = b"one\r\ntwo\n0123456789abc\nlast";
        let mut reader = BufReader::with_capacity(4, input);
        let mut lines = Vec::new();
        while let Some(line) = read_line_capped(&mut reader, 10).await.unwrap() {
            lines.push(line);
        }
        assert_eq!(lines, ["one", "two", "0123456789", "abc", "last"]);
    }

    #[tokio::test]
    async fn console_lines_reach_the_sink() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let logger = Logger::root(slog::Discard, slog::o!());
        forward_console(&b"Linux version 6.1\nMARKER\n"[..], logger, Some(tx)).await;
        assert_eq!(rx.recv().await.unwrap(), "Linux version 6.1");
        assert_eq!(rx.recv().await.unwrap(), "MARKER");
    }

    #[tokio::test]
    async fn tail_keeps_the_last_lines() {
        let tail = OutputTail::default();
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        forward_output(text.as_bytes(), Logger::root(slog::Discard, slog::o!()), tail.clone())
            .await;
        let summary = tail.summary();
        assert!(summary.starts_with("line 10 |") && summary.ends_with("line 29"), "{summary}");
    }
}
