//! What a session leaves on disk, so `session logs` works after the agent
//! itself restarted: `NAME/state.json` (its command, start, pid, and its
//! exit once known) and its output in `NAME/output.log`, which becomes
//! `output.log.1` when full: at most two files of [`LOG_FILE_LIMIT`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use banger_agent_proto::TtySize;
use serde::{Deserialize, Serialize};

use crate::log::log;

/// The size at which a session's log file is rotated.
pub(crate) const LOG_FILE_LIMIT: u64 = 1 << 20;

const STATE: &str = "state.json";
const LOG: &str = "output.log";
const OLD_LOG: &str = "output.log.1";

/// A session's `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub(crate) name: String,
    pub(crate) argv: Vec<String>,
    pub(crate) started_at: u64,
    pub(crate) pid: Option<u32>,
    pub(crate) size: TtySize,
    #[serde(default)]
    pub(crate) ended_at: Option<u64>,
    #[serde(default)]
    pub(crate) code: Option<i32>,
    #[serde(default)]
    pub(crate) signal: Option<i32>,
}

impl StateFile {
    /// Whether the session's end was recorded.
    pub(crate) fn ended(&self) -> bool {
        self.ended_at.is_some()
    }
}

/// Creates a fresh directory for a session (an older one of that name is
/// removed), readable by root only; its parents get the usual modes.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Writes `state.json` whole (a new file renamed over the old one).
pub(crate) fn write_state(dir: &Path, state: &StateFile) -> io::Result<()> {
    let tmp = dir.join(".state.json.tmp");
    let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    fs::write(&tmp, json)?;
    fs::rename(tmp, dir.join(STATE))
}

pub(crate) fn read_state(dir: &Path) -> io::Result<StateFile> {
    let json = fs::read(dir.join(STATE))?;
    serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The last `limit` bytes of a session's logs, oldest first.
pub(crate) fn read_logs(dir: &Path, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for name in [OLD_LOG, LOG] {
        if let Ok(mut file) = File::open(dir.join(name)) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let skip = len.saturating_sub(limit as u64);
            if file.seek(SeekFrom::Start(skip)).is_ok() {
                let _ = file.read_to_end(&mut out);
            }
        }
    }
    let extra = out.len().saturating_sub(limit);
    out.drain(..extra);
    out
}

/// Appends a session's output to its log files.
pub(crate) struct Log {
    dir: PathBuf,
    file: Option<File>,
    written: u64,
}

impl Log {
    pub(crate) fn create(dir: &Path) -> io::Result<Log> {
        let file = open_log(&dir.join(LOG))?;
        Ok(Log { dir: dir.to_owned(), file: Some(file), written: 0 })
    }

    /// Appends `bytes`, rotating first if they would take the file over its limit.
    /// A failure is logged once and ends logging: the session goes on.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let Some(file) = &mut self.file else { return };
        let result = (|| -> io::Result<()> {
            if self.written > 0 && self.written + bytes.len() as u64 > LOG_FILE_LIMIT {
                fs::rename(self.dir.join(LOG), self.dir.join(OLD_LOG))?;
                *file = open_log(&self.dir.join(LOG))?;
                self.written = 0;
            }
            file.write_all(bytes)?;
            self.written += bytes.len() as u64;
            Ok(())
        })();
        if let Err(e) = result {
            log!("cannot write the log of a session in {}: {e}; its output is kept in memory only", self.dir.display());
            self.file = None;
        }
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("s");
        create_dir(&session).unwrap();
        let mut state = StateFile {
            name: "s".into(),
            argv: vec!["sh".into()],
            started_at: 10,
            pid: Some(42),
            size: TtySize { rows: 24, cols: 80 },
            ended_at: None,
            code: None,
            signal: None,
        };
        write_state(&session, &state).unwrap();
        assert_eq!(read_state(&session).unwrap(), state);
        assert!(!read_state(&session).unwrap().ended());
        state.ended_at = Some(20);
        state.code = Some(0);
        write_state(&session, &state).unwrap();
        assert!(read_state(&session).unwrap().ended());
        // A state file from a newer agent with fields this one does not know still reads.
        fs::write(
            session.join(STATE),
            br#"{"name":"s","argv":[],"started_at":1,"pid":null,"size":{"rows":1,"cols":2},"new":1}"#,
        )
        .unwrap();
        assert_eq!(read_state(&session).unwrap().size, TtySize { rows: 1, cols: 2 });
        // A fresh directory replaces the old one.
        create_dir(&session).unwrap();
        assert!(read_state(&session).is_err());
    }

    #[test]
    fn logs_rotate_and_keep_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::create(dir.path()).unwrap();
        let chunk = vec![b'a'; (LOG_FILE_LIMIT / 2) as usize];
        log.write(&chunk);
        log.write(&chunk);
        log.write(b"newest");
        assert_eq!(fs::metadata(dir.path().join(OLD_LOG)).unwrap().len(), LOG_FILE_LIMIT);
        assert_eq!(fs::read(dir.path().join(LOG)).unwrap(), b"newest");
        let tail = read_logs(dir.path(), 10);
        assert_eq!(tail, b"aaaanewest");
        assert_eq!(read_logs(dir.path(), 1 << 30).len(), LOG_FILE_LIMIT as usize + 6);
        assert!(read_logs(&dir.path().join("none"), 10).is_empty());
    }
}
