//! The one seam through which banger runs host programs (`mkfs.ext4`,
//! `losetup`, `debootstrap`, and later `ip` and `nft`).
//!
//! A command is a plain value, [`HostCommand`]: program, arguments,
//! environment, stdin and working directory. Code that touches the host
//! takes a `&dyn HostCommands` and never builds a `std::process::Command`
//! itself. Production passes [`SystemCommands`], which spawns processes and
//! looks tools up with [`find_tool`]; unit tests pass a
//! [`RecordingCommands`], which records every command and answers with
//! scripted outputs, so the sequence of commands a piece of code runs can be
//! asserted without running anything (the model is youki's
//! `libcontainer::syscall`). Every failure is one [`CommandError`] whose
//! message is the command line and the tail of what it printed.

mod recording;
mod system;
mod tools;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Output};

pub use recording::{FakeReply, RecordingCommands};
pub use system::SystemCommands;
pub use tools::{find_tool, find_tool_in, TOOL_DIRS};

/// How much of a failing command's output an error carries, in bytes.
const OUTPUT_TAIL: usize = 2000;

/// One host command, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    /// The program: a tool name looked up with [`find_tool`], or a path.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables added to (or replacing ones in) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Bytes fed to its stdin; `None` gives it `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Its working directory; `None` inherits ours.
    pub cwd: Option<PathBuf>,
    /// Exit codes that mean success (`[0]` unless a tool says otherwise).
    pub ok_exit_codes: Vec<i32>,
}

impl HostCommand {
    /// `program` with no arguments, stdin from `/dev/null`, success on exit 0.
    pub fn new(program: impl Into<OsString>) -> Self {
        HostCommand {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            cwd: None,
            ok_exit_codes: vec![0],
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Feeds `bytes` to the command's stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Runs the command in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Also accepts exit `code` as success (`e2fsck` exits 1 after fixing errors).
    pub fn ok_exit_code(mut self, code: i32) -> Self {
        self.ok_exit_codes.push(code);
        self
    }

    /// The command line as a person would type it: arguments with spaces
    /// (or empty ones) in single quotes.
    pub fn render(&self) -> String {
        let mut line = self.program.to_string_lossy().into_owned();
        for arg in &self.args {
            let arg = arg.to_string_lossy();
            line.push(' ');
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                line.push('\'');
                line.push_str(&arg);
                line.push('\'');
            } else {
                line.push_str(&arg);
            }
        }
        line
    }

    /// Whether `status` is one of the command's success codes.
    pub fn succeeded(&self, status: ExitStatus) -> bool {
        status.code().is_some_and(|code| self.ok_exit_codes.contains(&code))
    }
}

/// Why a host command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program is neither a path nor found by [`find_tool`].
    #[error("cannot run {line}: {program} not found on PATH or in {dirs}", dirs = TOOL_DIRS.join(", "))]
    NotFound {
        /// The command line.
        line: String,
        /// The program looked for.
        program: String,
    },
    /// The process could not be started.
    #[error("cannot run {line}")]
    Spawn {
        /// The command line.
        line: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Feeding stdin or collecting the output failed.
    #[error("lost the output of {line}")]
    Io {
        /// The command line.
        line: String,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The process ended with an exit code it does not count as success, or by a signal.
    #[error("{line} failed ({status}){}", tail_suffix(.output_tail))]
    Failed {
        /// The command line.
        line: String,
        /// How it ended (`exit status: 1`, `signal: 9 (SIGKILL)`).
        status: String,
        /// The end of what it printed (stderr, else stdout), on one line.
        output_tail: String,
    },
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

impl CommandError {
    /// The command line of the command that failed.
    pub fn line(&self) -> &str {
        match self {
            CommandError::NotFound { line, .. }
            | CommandError::Spawn { line, .. }
            | CommandError::Io { line, .. }
            | CommandError::Failed { line, .. } => line,
        }
    }
}

/// Runs host commands. Implementations: [`SystemCommands`] (real processes)
/// and [`RecordingCommands`] (a recording fake for unit tests).
pub trait HostCommands: Send + Sync {
    /// Runs `cmd` to completion and returns what it printed, whatever its
    /// exit status; fails only when it could not be run.
    fn output(&self, cmd: &HostCommand) -> Result<Output, CommandError>;

    /// Like [`output`](Self::output), handing each line of stdout to
    /// `on_line` as it is printed (for progress).
    fn output_streaming(&self, cmd: &HostCommand, on_line: &mut dyn FnMut(&str)) -> Result<Output, CommandError>;

    /// Where `tool` is, for checking up front that a tool is installed.
    fn find_tool(&self, tool: &str) -> Option<PathBuf>;

    /// Runs `cmd` and fails unless it exits with one of its success codes.
    fn run(&self, cmd: &HostCommand) -> Result<Output, CommandError> {
        check(cmd, self.output(cmd)?)
    }

    /// [`run`](Self::run) with stdout lines handed to `on_line` as they come.
    fn run_streaming(&self, cmd: &HostCommand, on_line: &mut dyn FnMut(&str)) -> Result<Output, CommandError> {
        check(cmd, self.output_streaming(cmd, on_line)?)
    }
}

/// `output` if `cmd` counts its status as success, else [`CommandError::Failed`].
pub fn check(cmd: &HostCommand, output: Output) -> Result<Output, CommandError> {
    if cmd.succeeded(output.status) {
        return Ok(output);
    }
    let said = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) { &output.stderr } else { &output.stdout };
    Err(CommandError::Failed {
        line: cmd.render(),
        status: output.status.to_string(),
        output_tail: one_line_tail(said),
    })
}

/// The last [`OUTPUT_TAIL`] bytes of `text`, its lines joined with `; `.
fn one_line_tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let joined = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    let start = joined.len().saturating_sub(OUTPUT_TAIL);
    let start = (start..joined.len()).find(|&i| joined.is_char_boundary(i)).unwrap_or(joined.len());
    joined[start..].to_owned()
}

/// An `Output` with exit `code`, for fakes.
pub(crate) fn output_with_code(code: i32, stdout: Vec<u8>, stderr: Vec<u8>) -> Output {
    Output { status: ExitStatus::from_raw((code & 0xff) << 8), stdout, stderr }
}

/// Whether `program` names a file rather than a tool to look up.
pub(crate) fn is_path(program: &OsStr) -> bool {
    program.as_encoded_bytes().contains(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_quotes_what_a_shell_would_split() {
        let cmd = HostCommand::new("dmsetup").args(["create", "n", "--table", "0 8 snapshot a b P 8", ""]);
        assert_eq!(cmd.render(), "dmsetup create n --table '0 8 snapshot a b P 8' ''");
    }

    #[test]
    fn failure_is_one_line_with_the_output_tail() {
        let cmd = HostCommand::new("mkfs.ext4").args(["-q", "/x"]);
        let err = check(&cmd, output_with_code(1, b"".to_vec(), b"mkfs: bad\n\n  really bad  \n".to_vec()));
        let msg = err.unwrap_err().to_string();
        assert_eq!(msg, "mkfs.ext4 -q /x failed (exit status: 1): mkfs: bad; really bad");
        // Stdout stands in when stderr is empty; a long tail keeps its end.
        let long = "x".repeat(5000) + "\nthe end";
        let err = check(&cmd, output_with_code(2, long.into_bytes(), Vec::new())).unwrap_err().to_string();
        assert!(err.ends_with("; the end") && err.len() < 2100, "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn extra_success_codes() {
        let cmd = HostCommand::new("e2fsck").ok_exit_code(1);
        assert!(check(&cmd, output_with_code(1, vec![], vec![])).is_ok());
        assert!(check(&cmd, output_with_code(4, vec![], vec![])).is_err());
        assert!(check(&HostCommand::new("x"), output_with_code(1, vec![], vec![])).is_err());
    }
}
