//! `banger doctor`: the daemon's host checks, one line each with a fix.

use std::process::ExitCode;

use banger_api::CheckStatus;

use crate::{output, Context};

pub async fn run(ctx: &Context) -> anyhow::Result<ExitCode> {
    let report = ctx.client.doctor().await?;
    if ctx.json {
        output::json(&report)?;
    } else {
        for check in &report.checks {
            let mark = match check.status {
                CheckStatus::Pass => "pass",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "FAIL",
            };
            println!("{mark:4}  {:14} {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                println!("      {:14} fix: {fix}", "");
            }
        }
    }
    let failed = report.checks.iter().any(|c| c.status == CheckStatus::Fail);
    Ok(if failed { ExitCode::from(crate::exit::FAILURE) } else { ExitCode::SUCCESS })
}
