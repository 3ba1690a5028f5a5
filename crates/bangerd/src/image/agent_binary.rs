//! Which guest agent images carry and every boot writes into its VM's
//! disk. It must be a static ELF, since it runs in guest roots that have
//! no dynamic loader. A configured
//! `[vms] agent_binary` is used or refused, never passed over; otherwise the
//! first static one among the usual places wins. What was looked at, and why
//! each was refused, goes into the error and into `banger doctor`.

use std::fmt;
use std::path::{Path, PathBuf};

use banger_api::{Check, CheckStatus};
use banger_image::Linkage;

use crate::Config;

/// Where `scripts/build-agent --install` puts the static agent.
pub const INSTALLED_AGENT: &str = "/usr/local/lib/banger/banger-agent";

/// The command that builds and installs a static agent.
pub const FIX_COMMAND: &str = "scripts/build-agent --install";

/// The places looked at when no agent is configured: beside the daemon's
/// executable (an install that ships them together), then the installed one.
/// A plain `cargo build` leaves a dynamically linked agent beside the daemon,
/// which is why the search goes on past a refused candidate.
pub fn default_candidates() -> Vec<PathBuf> {
    let beside = std::env::current_exe().ok().map(|exe| exe.with_file_name("banger-agent"));
    beside.into_iter().chain([PathBuf::from(INSTALLED_AGENT)]).collect()
}

/// Why a candidate is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No regular file there.
    Missing,
    /// An ELF that needs a dynamic loader.
    DynamicallyLinked,
    /// Not an ELF executable.
    NotElf,
    /// It could not be read.
    Unreadable(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing => f.write_str("does not exist"),
            Refusal::DynamicallyLinked => f.write_str("is dynamically linked, not a static ELF"),
            Refusal::NotElf => f.write_str("is not an ELF executable"),
            Refusal::Unreadable(why) => write!(f, "cannot be read ({why})"),
        }
    }
}

/// No usable agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentBinaryError {
    /// The configured `[vms] agent_binary` is not a static ELF.
    #[error(
        "the configured guest agent ([vms] agent_binary) {path} {refusal}; point it at a static banger-agent \
         (`{FIX_COMMAND}` builds one into {INSTALLED_AGENT})"
    )]
    Configured {
        /// The configured path.
        path: PathBuf,
        /// Why it is refused.
        refusal: Refusal,
    },
    /// None of the usual places has a static agent.
    #[error("no statically linked guest agent: {}; run `{FIX_COMMAND}`, or set [vms] agent_binary", refusals(.looked_at))]
    NotFound {
        /// Every candidate, in the order looked at, and why it was refused.
        looked_at: Vec<(PathBuf, Refusal)>,
    },
}

fn refusals(looked_at: &[(PathBuf, Refusal)]) -> String {
    if looked_at.is_empty() {
        return "nowhere to look".to_owned();
    }
    looked_at.iter().map(|(path, refusal)| format!("{} {refusal}", path.display())).collect::<Vec<_>>().join(", ")
}

/// The result of a search, for `banger doctor`: the chosen agent and the
/// candidates passed over before it.
#[derive(Debug)]
pub struct AgentSearch {
    /// The agent images will carry, or why there is none.
    pub chosen: Result<PathBuf, AgentBinaryError>,
    /// Candidates refused before the chosen one.
    pub passed_over: Vec<(PathBuf, Refusal)>,
}

/// Searches for the agent as `config` says.
pub fn search(config: &Config) -> AgentSearch {
    if let Some(path) = &config.agent_binary {
        let chosen = match judge(path) {
            None => Ok(path.clone()),
            Some(refusal) => Err(AgentBinaryError::Configured { path: path.clone(), refusal }),
        };
        return AgentSearch { chosen, passed_over: Vec::new() };
    }
    let mut passed_over = Vec::new();
    for path in &config.agent_candidates {
        match judge(path) {
            None => return AgentSearch { chosen: Ok(path.clone()), passed_over },
            Some(refusal) => passed_over.push((path.clone(), refusal)),
        }
    }
    AgentSearch { chosen: Err(AgentBinaryError::NotFound { looked_at: passed_over }), passed_over: Vec::new() }
}

/// The agent images carry and boots install, or why there is none.
pub fn find(config: &Config) -> Result<PathBuf, AgentBinaryError> {
    search(config).chosen
}

/// `None` when `path` is a static ELF, else why it is refused.
fn judge(path: &Path) -> Option<Refusal> {
    if !path.is_file() {
        return Some(Refusal::Missing);
    }
    match banger_image::file_linkage(path) {
        Ok(Linkage::Static) => None,
        Ok(Linkage::Dynamic) => Some(Refusal::DynamicallyLinked),
        Ok(Linkage::NotElf) => Some(Refusal::NotElf),
        Err(e) => Some(Refusal::Unreadable(e.to_string())),
    }
}

impl AgentSearch {
    /// The `agent` line of `banger doctor`.
    pub fn check(&self) -> Check {
        let (status, detail, fix) = match &self.chosen {
            Ok(path) => {
                let mut detail = format!("{} (static ELF)", path.display());
                if !self.passed_over.is_empty() {
                    detail.push_str(&format!("; passed over {}", refusals(&self.passed_over)));
                }
                (CheckStatus::Pass, detail, None)
            }
            // A configuration that cannot work is the host's failure; a
            // missing agent only stops image builds and boots.
            Err(e @ AgentBinaryError::Configured { .. }) => (CheckStatus::Fail, e.to_string(), None),
            Err(AgentBinaryError::NotFound { looked_at }) => (
                CheckStatus::Warn,
                format!("no static banger-agent, so images cannot be built nor VMs booted: {}", refusals(looked_at)),
                Some(FIX_COMMAND.to_owned()),
            ),
        };
        let fix = fix.or_else(|| {
            (status == CheckStatus::Fail).then(|| format!("set [vms] agent_binary to a static agent ({FIX_COMMAND})"))
        });
        Check { name: "agent".to_owned(), status, detail, fix }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(explicit: Option<&Path>, candidates: &[&Path]) -> Config {
        let mut config = Config::new("/nonexistent/state", "/nonexistent/sock");
        config.agent_binary = explicit.map(Path::to_owned);
        config.agent_candidates = candidates.iter().map(|p| p.to_path_buf()).collect();
        config
    }

    /// Real files: busybox-static is a static ELF, this test binary is not.
    fn files() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let dynamic = dir.path().join("dynamic-agent");
        std::fs::copy(std::env::current_exe().unwrap(), &dynamic).unwrap();
        let text = dir.path().join("script-agent");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        let missing = dir.path().join("missing-agent");
        (dir, dynamic, text, missing)
    }

    #[test]
    fn the_first_static_candidate_wins_and_the_refused_are_listed() {
        let (_dir, dynamic, _, missing) = files();
        let busybox = Path::new("/bin/busybox");
        let search = search(&config(None, &[&missing, &dynamic, busybox]));
        assert_eq!(search.chosen.as_deref().unwrap(), busybox);
        assert_eq!(search.passed_over, [(missing, Refusal::Missing), (dynamic, Refusal::DynamicallyLinked)]);
        let check = search.check();
        assert_eq!(check.status, CheckStatus::Pass);
        assert!(check.detail.starts_with("/bin/busybox (static ELF); passed over"), "{}", check.detail);
    }

    #[test]
    fn without_a_static_candidate_the_error_names_each_and_the_fix() {
        let (_dir, dynamic, text, missing) = files();
        let error = find(&config(None, &[&dynamic, &text, &missing])).unwrap_err();
        let message = error.to_string();
        for (path, why) in [(&dynamic, "is dynamically linked"), (&text, "is not an ELF"), (&missing, "does not exist")]
        {
            assert!(message.contains(&format!("{} {why}", path.display())), "{message}");
        }
        assert!(message.contains("scripts/build-agent --install"), "{message}");
    }

    #[test]
    fn a_configured_agent_that_is_not_static_is_refused_not_skipped() {
        let (_dir, dynamic, _, _) = files();
        let search = search(&config(Some(&dynamic), &[Path::new("/bin/busybox")]));
        let error = search.chosen.as_ref().unwrap_err();
        assert!(matches!(error, AgentBinaryError::Configured { refusal: Refusal::DynamicallyLinked, .. }));
        assert!(error.to_string().contains(&dynamic.display().to_string()), "{error}");
        assert_eq!(search.check().status, CheckStatus::Fail);
    }
}
