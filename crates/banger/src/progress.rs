//! Following an operation to its end with a progress bar on stderr (hidden
//! when stderr is not a terminal or `--json` is given).

use std::time::Duration;

use anyhow::bail;
use banger_api::{Operation, OperationState};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Context;

/// Waits for operation `op` to end; returns it if it succeeded, else an
/// error carrying the daemon's error code.
pub async fn follow(ctx: &Context, op: &Operation) -> anyhow::Result<Operation> {
    let bar = if ctx.json { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.enable_steady_tick(Duration::from_millis(120));
    let bytes_style =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> ");
    let step_style = ProgressStyle::with_template("{spinner} {msg}").expect("valid template");
    let done = ctx
        .client
        .wait(&op.id, |update| {
            let p = &update.progress;
            // One message, so a redraw never shows one step's number with another's name.
            let step =
                format!("{} [{}/{}] {}", update.target, (p.steps_done + 1).min(p.steps_total), p.steps_total, p.step);
            bar.set_message(step.clone());
            match p.bytes_total {
                Some(total) if p.bytes_done > 0 => {
                    bar.set_style(bytes_style.clone());
                    bar.set_length(total);
                    bar.set_position(p.bytes_done);
                }
                _ if p.bytes_done > 0 => {
                    bar.set_style(step_style.clone());
                    bar.set_message(format!("{step} {}", crate::output::size(p.bytes_done)));
                }
                _ => bar.set_style(step_style.clone()),
            }
        })
        .await?;
    bar.finish_and_clear();
    match done.state {
        OperationState::Succeeded => Ok(done),
        OperationState::Failed => {
            let error = done.error.clone().unwrap_or(banger_api::ApiError {
                code: banger_api::ErrorCode::Internal,
                message: "operation failed without an error".into(),
            });
            Err(banger_client::ClientError::Api(error).into())
        }
        OperationState::Running => bail!("operation {} is still running", done.id),
    }
}
