//! Host commands as data, and the narrow interface that runs them: the real
//! one spawns processes, tests use a recording fake.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::StorageError;

/// How much of a failing tool's stderr an error carries.
const STDERR_TAIL: usize = 2000;
/// Where tools are looked for besides `$PATH`.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// One host command to run, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedCommand {
    /// The program, such as `losetup`.
    pub program: &'static str,
    /// Its arguments; may contain placeholders bound by earlier steps.
    pub args: Vec<String>,
    /// The placeholder this step's trimmed stdout defines, if any.
    pub binds: Option<&'static str>,
    /// What undoes this step, for rollback when a later step fails.
    pub undo: Option<Box<PlannedCommand>>,
}

impl PlannedCommand {
    /// A command with no binding and no undo.
    pub fn new(program: &'static str, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        PlannedCommand { program, args: args.into_iter().map(Into::into).collect(), binds: None, undo: None }
    }

    /// The command line as a person would type it.
    pub fn render(&self) -> String {
        let mut line = self.program.to_owned();
        for arg in &self.args {
            line.push(' ');
            if arg.contains(' ') {
                line.push_str(&format!("'{arg}'"));
            } else {
                line.push_str(arg);
            }
        }
        line
    }

    /// This command with `placeholder` replaced by `value` everywhere.
    pub(crate) fn substitute(&self, bindings: &[(&'static str, String)]) -> PlannedCommand {
        let args = self
            .args
            .iter()
            .map(|arg| bindings.iter().fold(arg.clone(), |a, (key, value)| a.replace(key, value)))
            .collect();
        PlannedCommand { program: self.program, args, binds: self.binds, undo: self.undo.clone() }
    }
}

/// Runs host commands.
pub(crate) trait Runner {
    /// Runs `cmd` and returns its stdout, trimmed; a non-zero exit is an error.
    fn run(&mut self, cmd: &PlannedCommand) -> Result<String, StorageError>;
}

/// Spawns real processes.
pub(crate) struct HostRunner;

impl Runner for HostRunner {
    fn run(&mut self, cmd: &PlannedCommand) -> Result<String, StorageError> {
        let output = Command::new(cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| StorageError::Spawn { program: cmd.program.to_owned(), source })?;
        if !output.status.success() {
            return Err(failure(&cmd.render(), &output.status.to_string(), &output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// A [`StorageError::Command`] carrying the tail of `stderr`.
pub(crate) fn failure(program: &str, status: &str, stderr: &[u8]) -> StorageError {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(STDERR_TAIL);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    StorageError::Command { program: program.to_owned(), status: status.to_owned(), stderr: text[start..].to_owned() }
}

/// Finds `tool`, or says which Debian package provides it.
pub(crate) fn require_tool(tool: &'static str, package: &'static str) -> Result<PathBuf, StorageError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .ok_or(StorageError::MissingTool { tool, package })
}
