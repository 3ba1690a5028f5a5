//! `banger completions SHELL`.

use clap::CommandFactory;

/// Writes the completion script for `shell` to stdout.
pub fn print(shell: clap_complete::Shell) {
    let mut command = crate::Cli::command();
    clap_complete::generate(shell, &mut command, "banger", &mut std::io::stdout());
}
