//! How many API connections may be open and how long a client may take:
//! the `[api]` settings, their defaults, and the open-files limit they are
//! sized from.

use std::time::Duration;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The most connections by default, however many files the daemon may open.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The fewest connections a default allows, however low the open-files limit.
const MIN_DEFAULT_CONNECTIONS: usize = 64;

/// Default time a client has to send a whole request header.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time a request body may go without sending a byte.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default time a connection may sit between requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits on API connections (`[api]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; at the cap the one waiting longest for a
    /// request is closed to make room, or a new one is refused.
    pub max_connections: usize,
    /// Time from the start of a connection (or of a request's first byte
    /// after an idle spell) until its header is complete.
    pub header_timeout: Duration,
    /// Time a request body may go without sending a byte while a handler
    /// waits for it; then the request gets a 408.
    pub body_timeout: Duration,
    /// Time a connection may sit with no request after a response.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: default_max_connections(open_files_limit()),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// The default cap for a process that may open `open_files` files: half of
/// them, leaving the rest to VMs, disks and the database, within
/// [`MIN_DEFAULT_CONNECTIONS`]..=[`DEFAULT_MAX_CONNECTIONS`].
pub fn default_max_connections(open_files: Option<u64>) -> usize {
    let half = open_files.map_or(DEFAULT_MAX_CONNECTIONS as u64, |n| n / 2);
    usize::try_from(half).unwrap_or(usize::MAX).clamp(MIN_DEFAULT_CONNECTIONS, DEFAULT_MAX_CONNECTIONS)
}

/// The soft open-files limit now; `None` when unlimited.
pub fn open_files_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Raises the soft open-files limit to the hard one, so the connection cap
/// and the VMs' files fit; returns the limit in force afterwards.
pub fn raise_open_files_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, soft = ?limit.current, hard = ?limit.maximum, "cannot raise the open-files limit");
        }
    }
    open_files_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_is_half_the_open_files_within_bounds() {
        assert_eq!(default_max_connections(Some(1024)), 512);
        assert_eq!(default_max_connections(Some(20_000)), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(default_max_connections(Some(1 << 20)), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(default_max_connections(Some(100)), MIN_DEFAULT_CONNECTIONS);
        assert_eq!(default_max_connections(None), DEFAULT_MAX_CONNECTIONS);
    }
}
