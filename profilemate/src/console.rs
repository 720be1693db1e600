//! Lines for the terminal: the only way ProfileMate writes to stdout and stderr.
//!
//! Owns: writing a line so that a failed write (a closed pipe after a dropped SSH session,
//! stdout redirected to a full disk) can never end the session. `println!`/`eprintln!`
//! panic on a failed write; these functions report it instead (stdout) or drop the line
//! (stderr: there is nowhere left to say it). Does not own: what is said (the session and
//! `output::losses` compose the lines) or logging (`env_logger` already ignores failed
//! writes). While `profilemate top` draws its full-screen view, stderr lines are held back and
//! written when the screen is restored.

use std::{io::Write, sync::Mutex};

/// Stderr lines held back while `profilemate top` owns the screen (None: not held).
static HELD: Mutex<Option<Vec<String>>> = Mutex::new(None);
/// Most lines held (the oldest are dropped past it).
const HELD_MAX: usize = 1000;

/// Holds stderr lines back (a full-screen view is drawn) until [`release_err`].
pub fn hold_err() {
    if let Ok(mut h) = HELD.lock() {
        h.get_or_insert_with(Vec::new);
    }
}

/// Writes the held lines and stops holding.
pub fn release_err() {
    let held = HELD.lock().ok().and_then(|mut h| h.take());
    for line in held.unwrap_or_default() {
        err_line(&line);
    }
}

/// The latest line held back, if any (the view shows it).
#[must_use]
pub fn last_held_err() -> Option<String> {
    HELD.lock().ok()?.as_ref()?.last().cloned()
}

/// Writes `line` and a newline to stderr; a failed write is ignored (the session's files
/// are its record, the terminal is a courtesy). While held, the line is kept for later.
pub fn err_line(line: &str) {
    if let Ok(mut h) = HELD.lock() {
        if let Some(v) = h.as_mut() {
            if v.len() >= HELD_MAX {
                v.remove(0);
            }
            v.push(line.to_owned());
            return;
        }
    }
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}").and_then(|()| e.flush());
}

/// Writes `line` and a newline to stdout and flushes it.
///
/// # Errors
///
/// The write or the flush failed (stdout is a closed pipe, a full device, ...).
pub fn out_line(line: &str) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}")?;
    o.flush()
}

/// `eprintln!` that cannot panic: formats its arguments and hands them to [`err_line`].
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::err_line(&format!($($arg)*))
    };
}
