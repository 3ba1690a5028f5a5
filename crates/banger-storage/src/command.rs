//! Planned host commands: a [`PlannedCommand`] is a step of a plan (the
//! dm-snapshot set-up) with the placeholder its output binds and the step
//! that undoes it. Running one goes through banger-host's [`HostCommands`].

use banger_host::{HostCommand, HostCommands};

use crate::StorageError;

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

    /// The command to hand to a [`HostCommands`] runner.
    pub fn host_command(&self) -> HostCommand {
        HostCommand::new(self.program).args(&self.args)
    }

    /// The command line as a person would type it.
    pub fn render(&self) -> String {
        self.host_command().render()
    }

    /// This command with each placeholder in `bindings` replaced by its value.
    pub(crate) fn substitute(&self, bindings: &[(&'static str, String)]) -> PlannedCommand {
        let args = self
            .args
            .iter()
            .map(|arg| bindings.iter().fold(arg.clone(), |a, (key, value)| a.replace(key, value)))
            .collect();
        PlannedCommand { program: self.program, args, binds: self.binds, undo: self.undo.clone() }
    }

    /// Runs the command and returns its stdout, trimmed.
    pub(crate) fn run(&self, cmds: &dyn HostCommands) -> Result<String, StorageError> {
        let output = cmds.run(&self.host_command())?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// Checks that `tool` is installed, or says which Debian package provides it.
pub(crate) fn require_tool(
    cmds: &dyn HostCommands,
    tool: &'static str,
    package: &'static str,
) -> Result<(), StorageError> {
    cmds.find_tool(tool).map(drop).ok_or(StorageError::MissingTool { tool, package })
}
