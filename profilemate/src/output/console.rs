//! Lines for the terminal: the only way ProfileMate writes to stdout and stderr.
//!
//! Owns: writing a line so that a failed write (a closed pipe after a dropped SSH session,
//! stdout redirected to a full disk) can never end the session. `println!`/`eprintln!`
//! panic on a failed write; these functions report it instead (stdout) or drop the line
//! (stderr: there is nowhere left to say it). Does not own: what is said (the session and
//! `output::losses` compose the lines) or logging (`env_logger` already ignores failed
//! writes).

use std::io::Write;

/// Writes `line` and a newline to stderr; a failed write is ignored (the session's files
/// are its record, the terminal is a courtesy).
pub fn err_line(line: &str) {
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
        $crate::output::console::err_line(&format!($($arg)*))
    };
}
