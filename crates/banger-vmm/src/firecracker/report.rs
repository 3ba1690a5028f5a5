//! What a user is told when a Firecracker VM fails to come up or dies: why
//! Firecracker exited (the errors of its own log, and its stderr) and what
//! the guest last printed on its serial console. The three are separate
//! files, so the guest's console never quotes Firecracker's lines.

use std::path::Path;

use super::api::RunFiles;

/// Lines of Firecracker's log searched for errors: its exit follows them.
const LOG_LINES: usize = 100;
/// Console lines quoted.
const CONSOLE_LINES: usize = 10;
/// Error lines of Firecracker's log quoted.
const ERROR_LINES: usize = 5;
/// Lines of Firecracker's stderr quoted.
const STDERR_LINES: usize = 5;

/// The failure report of the VM whose runtime files these are: one
/// paragraph for Firecracker, one for the guest console.
pub fn failure_report(files: &RunFiles) -> String {
    let log = tail(&files.log, LOG_LINES);
    let stderr = tail(&files.vmm_log, STDERR_LINES);
    let console = tail(&files.console, CONSOLE_LINES);
    let mut report = firecracker_paragraph(&log, &stderr);
    report.push('\n');
    report.push_str(&console_paragraph(&console));
    report
}

/// Why Firecracker stopped, from its log's error lines and its stderr.
fn firecracker_paragraph(log: &str, stderr: &str) -> String {
    let errors = error_messages(log);
    let stderr = last_lines(stderr, STDERR_LINES);
    let mut text = if errors.is_empty() {
        "Firecracker's log shows no error".to_string()
    } else {
        format!("Firecracker's log ends with these errors:\n{}", indent(&errors.join("\n")))
    };
    if !stderr.is_empty() {
        text.push_str(&format!("\nFirecracker's stderr:\n{}", indent(&stderr)));
    }
    text
}

fn console_paragraph(console: &str) -> String {
    match last_lines(console, CONSOLE_LINES) {
        lines if lines.is_empty() => "The guest's console is empty".into(),
        lines => format!("The guest's console ended with:\n{}", indent(&lines)),
    }
}

/// The messages of the last [`ERROR_LINES`] `ERROR` lines of a log written
/// with `--show-level`: `<time> [<id>:<thread>:ERROR] <message>`.
fn error_messages(log: &str) -> Vec<String> {
    let errors: Vec<String> = log
        .lines()
        .filter_map(|line| {
            let (prefix, message) = line.split_once("] ")?;
            prefix.ends_with(":ERROR").then(|| message.trim().to_string())
        })
        .collect();
    errors[errors.len().saturating_sub(ERROR_LINES)..].to_vec()
}

/// The last `n` non-empty lines of `text`.
pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// The last lines of a file (from its end only: a guest console can be
/// large); empty if it cannot be read.
fn tail(path: &Path, lines: usize) -> String {
    crate::report::tail(path, lines).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as Firecracker v1.16.1 wrote them for a guest that crashed.
    const LOG: &str = "\
2026-12-01T22:16:34.208611533 [x:main:INFO] Artificially kick devices
2026-12-01T22:16:34.208671954 [x:fc_vcpu 0:WARN] Received a VcpuEvent::Resume message with immediate_exit enabled.
2026-12-01T22:16:34.209414639 [x:fc_vcpu 0:ERROR] Unexpected exit reason on vcpu run: Shutdown
2026-12-01T22:16:34.209461269 [x:main:INFO] Vmm is stopping.
2026-12-01T22:16:34.228366516 [x:main:ERROR] RunWithApiError error: MicroVM stopped with an error: GenericError
2026-12-01T22:16:34.228445274 [x:main:ERROR] Firecracker exiting with error. exit_code=1
";

    #[test]
    fn errors_of_the_log_are_quoted_without_their_prefix() {
        assert_eq!(
            error_messages(LOG),
            [
                "Unexpected exit reason on vcpu run: Shutdown",
                "RunWithApiError error: MicroVM stopped with an error: GenericError",
                "Firecracker exiting with error. exit_code=1",
            ]
        );
        assert!(error_messages("2026 [x:main:INFO] fine\nnot a log line\n").is_empty());
    }

    #[test]
    fn report_has_firecrackers_reason_and_the_console_apart() {
        let text = format!(
            "{}\n{}",
            firecracker_paragraph(LOG, "Error: RunWithApi(MicroVMStoppedWithError(GenericError))\n"),
            console_paragraph("[    0.000000] Linux version 6.1\nKernel panic - not syncing\n")
        );
        assert_eq!(
            text,
            "Firecracker's log ends with these errors:\n  Unexpected exit reason on vcpu run: Shutdown\n  \
             RunWithApiError error: MicroVM stopped with an error: GenericError\n  \
             Firecracker exiting with error. exit_code=1\nFirecracker's stderr:\n  \
             Error: RunWithApi(MicroVMStoppedWithError(GenericError))\nThe guest's console ended with:\n  \
             [    0.000000] Linux version 6.1\n  Kernel panic - not syncing"
        );
        assert_eq!(console_paragraph("\n\n"), "The guest's console is empty");
        assert_eq!(firecracker_paragraph("", ""), "Firecracker's log shows no error");
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }
}
