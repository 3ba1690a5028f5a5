//! `banger operation list|show|wait`.

use std::process::ExitCode;

use banger_api::Operation;
use clap::Subcommand;

use crate::{output, progress, Context};

#[derive(Debug, Subcommand)]
pub enum OperationCommand {
    /// Recent operations, newest first.
    #[command(alias = "ls")]
    List,
    /// One operation's state, progress and outcome.
    Show {
        /// Operation id.
        id: String,
    },
    /// Follow an operation until it ends; exits non-zero if it failed.
    Wait {
        /// Operation id.
        id: String,
    },
}

pub async fn run(command: OperationCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        OperationCommand::List => {
            let ops = ctx.client.operations().await?;
            if ctx.json {
                return output::json(&ops).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = ops.iter().map(row).collect();
            output::table(&["ID", "KIND", "TARGET", "STATE", "PROGRESS", "STARTED"], &rows);
        }
        OperationCommand::Show { id } => {
            let op = ctx.client.operation(&id).await?;
            if ctx.json {
                return output::json(&op).map(|_| ExitCode::SUCCESS);
            }
            output::table(&["ID", "KIND", "TARGET", "STATE", "PROGRESS", "STARTED"], &[row(&op)]);
            if let Some(error) = &op.error {
                println!("error: {} ({})", error.message, error.code);
            }
        }
        OperationCommand::Wait { id } => {
            let op = ctx.client.operation(&id).await?;
            let done = progress::follow(ctx, &op).await?;
            if ctx.json {
                output::json(&done)?;
            } else {
                println!("{} {}: succeeded", done.id, done.target);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(op: &Operation) -> Vec<String> {
    vec![
        op.id.clone(),
        op.kind.to_string(),
        op.target.clone(),
        serde_json::to_value(op.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        format!("{:.0}% {}", op.progress.percent(), op.progress.step),
        op.created_at.to_string(),
    ]
}
