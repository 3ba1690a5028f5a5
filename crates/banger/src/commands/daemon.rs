//! `banger daemon status`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::{output, Context};

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Whether bangerd answers, its version and state directory.
    Status,
}

pub async fn run(command: DaemonCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        DaemonCommand::Status => {
            let health = ctx.client.health().await?;
            if ctx.json {
                output::json(&health)?;
            } else {
                println!("bangerd {} (API {}) is running", health.version, health.api);
                println!("socket:    {}", ctx.client.socket().display());
                println!("state dir: {}", health.state_dir);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
