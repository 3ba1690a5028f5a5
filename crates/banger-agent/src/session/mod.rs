//! Guest sessions: processes under a terminal the agent owns, which
//! outlive every stream and every host connection ([`live`] says how they
//! are shared). The registry here names them, keeps them after they end
//! (for their logs) until removed, and finds what an earlier agent left
//! on disk ([`store`]).

mod history;
mod live;
pub(crate) mod serve;
mod store;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use banger_agent_proto::{ErrorKind, SessionInfo, SessionStart};

use crate::log::log;
use crate::reaper::Reaper;
use crate::requests::Refusal;
use live::Session;

/// The longest session name.
const MAX_NAME: usize = 64;

/// Every session in the guest, by name.
pub(crate) struct Sessions {
    dir: PathBuf,
    reaper: Reaper,
    all: Mutex<BTreeMap<String, Arc<Session>>>,
}

/// Why `name` cannot name a session (it becomes a directory name).
fn check_name(name: &str) -> Result<(), Refusal> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_NAME {
        "is longer than 64 bytes"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains("..") {
        "contains '..'"
    } else if name == "." || name.chars().any(char::is_control) {
        "is not a usable name"
    } else {
        return Ok(());
    };
    Err(Refusal::invalid(format!("the session name {name:?} {problem}")))
}

impl Sessions {
    /// The sessions an earlier agent left under `dir` (ended or lost now).
    pub(crate) fn load(dir: &Path, reaper: Reaper) -> Sessions {
        let mut all = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                match Session::restore(&entry.path(), &reaper) {
                    Ok(session) if entry.file_name() == session.name.as_str() => {
                        all.insert(session.name.clone(), Arc::new(session));
                    }
                    Ok(_) => log!("ignoring {}: its state names another session", entry.path().display()),
                    Err(e) => log!("ignoring {}: {e}", entry.path().display()),
                }
            }
        }
        if !all.is_empty() {
            log!("found {} sessions of an earlier agent in {}", all.len(), dir.display());
        }
        Sessions { dir: dir.to_owned(), reaper, all: Mutex::new(all) }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Session>>> {
        self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session; a running one of that name refuses it, an ended one is replaced.
    pub(crate) fn start(&self, start: SessionStart) -> Result<SessionInfo, Refusal> {
        check_name(&start.name)?;
        let mut all = self.lock();
        if all.get(&start.name).is_some_and(|s| s.is_running()) {
            let message = format!("a session named {} is running already", start.name);
            return Err(Refusal::new(ErrorKind::AlreadyExists, message));
        }
        let session = Session::start(&start.name, start.exec, self.dir.join(&start.name), &self.reaper)?;
        let info = session.info();
        log!("session {} started: pid {}", start.name, info.pid.unwrap_or_default());
        all.insert(start.name, session);
        Ok(info)
    }

    pub(crate) fn get(&self, name: &str) -> Result<Arc<Session>, Refusal> {
        self.lock().get(name).cloned().ok_or_else(|| Refusal::not_found(format!("there is no session named {name}")))
    }

    /// Every session, oldest first.
    pub(crate) fn list(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> = self.lock().values().map(|s| s.info()).collect();
        sessions.sort_by(|a, b| (a.started_at, &a.name).cmp(&(b.started_at, &b.name)));
        sessions
    }

    pub(crate) fn stop(&self, name: &str, signal: i32) -> Result<(), Refusal> {
        self.get(name)?.signal(signal)
    }

    /// Forgets an ended session and removes its files.
    pub(crate) fn remove(&self, name: &str) -> Result<(), Refusal> {
        let mut all = self.lock();
        let session = all.get(name).ok_or_else(|| Refusal::not_found(format!("there is no session named {name}")))?;
        if session.is_running() {
            return Err(Refusal::invalid(format!("session {name} is running: stop it first")));
        }
        match fs::remove_dir_all(session.dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Refusal::of_io(&e, format!("cannot remove session {name}'s files: {e}")));
            }
            _ => {}
        }
        all.remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_directories_are_refused() {
        for good in ["agent", "dev-1", "a.b", "x_y", &"n".repeat(64)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a/b", "/", "..", "a..b", ".", "tab\there", &"n".repeat(65)] {
            let refusal = check_name(bad).unwrap_err();
            assert_eq!(refusal.kind, ErrorKind::InvalidArgument, "{bad}");
        }
        assert!(check_name("a/b").unwrap_err().message.contains("'/'"));
    }
}
