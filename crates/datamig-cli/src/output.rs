//! Writing to the terminal: a closed pipe (`datamig schema status | head`) is not an error.
//!
//! stdout holds a command's result. stderr holds what happens on the way —
//! messages, warnings, the error — as text lines, or with `--log-format json` as
//! one JSON event per line through `tracing` (so that a log pipeline reading
//! stderr never meets a line it cannot parse).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

/// Makes stderr's lines JSON events (`--log-format json`); set once, at start.
pub fn json_logs(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether stderr's lines are JSON events.
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Prints a line on stdout, ignoring a closed pipe.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// Writes a line on stderr: as it is, or as an event of the level its
/// `error: ` or `warning: ` prefix says (info without one) in JSON.
pub fn note(text: &str) {
    if is_json() {
        if let Some(rest) = text.strip_prefix("error: ") {
            tracing::error!("{rest}");
        } else if let Some(rest) = text.strip_prefix("warning: ") {
            tracing::warn!("{rest}");
        } else {
            tracing::info!("{text}");
        }
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// stderr for the log subscriber: a write that fails (a closed pipe, as in
/// `datamig run … 2>&1 | head -1`) is dropped. tracing-subscriber reports a
/// failed write with `eprintln!`, which panics on that same closed pipe, and
/// the run's end (its state, its summary) must not depend on who reads stderr.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
