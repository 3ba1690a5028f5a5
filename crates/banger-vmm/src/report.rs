//! The failure report: the last lines of a VM's console and of its VMM's
//! own log, read from the files' ends only, for the error message of a boot
//! that failed.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Lines of each log a report quotes.
pub const REPORT_LINES: usize = 20;

/// Bytes read from the end of each log: a guest that printed megabytes
/// costs no more than one that printed a line.
const TAIL_BYTES: u64 = 8 * 1024;

/// The most a report holds, whatever the logs.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// The last non-empty lines of each named log, each under its name, or a
/// line saying they were all empty. Logs that are missing are skipped.
pub fn failure_report(logs: &[(&str, &Path)]) -> String {
    let sections: Vec<String> = logs
        .iter()
        .filter_map(|(name, path)| {
            let tail = tail(path, REPORT_LINES)?;
            (!tail.is_empty()).then(|| format!("{name} ({}):\n{tail}", path.display()))
        })
        .collect();
    let mut report = if sections.is_empty() {
        let names: Vec<&str> = logs.iter().map(|(name, _)| *name).collect();
        format!("nothing in the {}", names.join(" or "))
    } else {
        sections.join("\n")
    };
    if report.len() > MAX_REPORT_BYTES {
        let mut cut = MAX_REPORT_BYTES;
        while !report.is_char_boundary(cut) {
            cut -= 1;
        }
        report.truncate(cut);
    }
    report
}

/// The last `lines` non-empty lines of the file, from its last
/// [`TAIL_BYTES`] bytes; `None` if it cannot be read.
pub(crate) fn tail(path: &Path, lines: usize) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::with_capacity((len - from) as usize);
    file.take(TAIL_BYTES).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut kept: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    // A tail that starts mid-file starts mid-line: drop that fragment.
    if from > 0 && kept.len() > 1 {
        kept.remove(0);
    }
    Some(kept[kept.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_end_of_each_log_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let vmm = dir.path().join("vmm.log");
        let text: String = (0..100).map(|i| format!("line {i}\n\n")).collect();
        std::fs::write(&console, text).unwrap();
        std::fs::write(&vmm, "qemu: oops\n").unwrap();
        let report = failure_report(&[("console", &console), ("VMM log", &vmm), ("none", &dir.path().join("x"))]);
        let lines: Vec<&str> = report.lines().collect();
        assert!(lines[0].starts_with("console ("), "{report}");
        assert_eq!(lines[1], "line 80");
        assert_eq!(lines[20], "line 99");
        assert!(lines[21].starts_with("VMM log ("), "{report}");
        assert_eq!(lines[22], "qemu: oops");
        assert_eq!(lines.len(), 23, "{report}");
    }

    #[test]
    fn a_huge_log_costs_a_bounded_read_and_report() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let long_line = "x".repeat(3000);
        let text: String = (0..2000).map(|i| format!("{i} {long_line}\n")).collect();
        std::fs::write(&console, text).unwrap();
        let report = failure_report(&[("console", &console)]);
        assert!(report.len() <= MAX_REPORT_BYTES, "{}", report.len());
        assert!(report.trim_end().ends_with(&long_line), "the last line is kept");
        assert!(report.lines().skip(1).all(|l| l.ends_with(&long_line)), "no line fragment");
    }

    #[test]
    fn empty_logs_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        std::fs::write(&console, "\n  \n").unwrap();
        assert_eq!(
            failure_report(&[("console", &console), ("VMM log", &dir.path().join("x"))]),
            "nothing in the console or VMM log"
        );
    }
}
