//! Whether running guests' agents answer: the supervisor pings each one
//! every [`KEEPALIVE_INTERVAL`]; one that has not answered for
//! [`UNRESPONSIVE_AFTER`] is shown as not answering, and new commands to it
//! are refused at once instead of waiting on it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use banger_api::AgentStatus;

/// How often a running guest's agent is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long one ping may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Silence longer than this marks an agent as not answering.
pub const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(4);

/// When each running VM's agent last answered.
#[derive(Default)]
pub struct Health {
    last_answer: Mutex<HashMap<String, Instant>>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.last_answer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an answer now; true if the status changed.
    pub fn answered(&self, name: &str) -> bool {
        let before = self.status(name);
        self.lock().insert(name.to_owned(), Instant::now());
        before != Some(AgentStatus::Answering)
    }

    /// The status of a VM's agent, if the VM is watched.
    pub fn status(&self, name: &str) -> Option<AgentStatus> {
        let last = *self.lock().get(name)?;
        Some(status_after(last.elapsed()))
    }

    /// Stops tracking a VM (it stopped).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// How long the agent has been silent, if it counts as not answering.
    pub fn silent_for(&self, name: &str) -> Option<Duration> {
        let silent = self.lock().get(name)?.elapsed();
        (status_after(silent) == AgentStatus::NotAnswering).then_some(silent)
    }
}

/// The status of an agent silent for `silence`.
pub fn status_after(silence: Duration) -> AgentStatus {
    if silence > UNRESPONSIVE_AFTER {
        AgentStatus::NotAnswering
    } else {
        AgentStatus::Answering
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_beyond_the_limit_is_not_answering() {
        assert_eq!(status_after(Duration::ZERO), AgentStatus::Answering);
        assert_eq!(status_after(UNRESPONSIVE_AFTER), AgentStatus::Answering);
        assert_eq!(status_after(UNRESPONSIVE_AFTER + Duration::from_millis(1)), AgentStatus::NotAnswering);
    }

    #[test]
    fn an_untracked_vm_has_no_status() {
        let health = Health::default();
        assert_eq!(health.status("a"), None);
        assert!(health.answered("a"));
        assert!(!health.answered("a"), "no change the second time");
        assert_eq!(health.status("a"), Some(AgentStatus::Answering));
        health.forget("a");
        assert_eq!(health.status("a"), None);
    }
}
