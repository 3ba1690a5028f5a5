//! Where the agent's messages go: stderr, which is the guest's console when
//! the agent runs as init. Writing never fails loudly: a panic in PID 1
//! would take the whole guest down.

use std::io::Write;

/// Writes one line, prefixed with the agent's name, ignoring errors.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "banger-agent: {args}");
}

/// Logs a formatted line to the console.
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::write(format_args!($($arg)*)) };
}
pub(crate) use log;
