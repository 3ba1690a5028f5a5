//! Warnings for limits hit by clients, at most one line per kind every few
//! seconds with a count, so a flood of connections cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::limits::Limits;

/// The shortest time between two lines of one kind.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// A limit a client hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// At the cap, a connection waiting for a request was closed to make room.
    Shed,
    /// At the cap with every connection busy, a new one was refused.
    Refused,
    /// A connection sent no whole request header in time and was closed.
    HeaderTimeout,
    /// A request body stalled and got a 408.
    BodyTimeout,
    /// Accepting a connection failed (out of file descriptors, say).
    AcceptFailed,
}

const KINDS: [Alarm; 5] = [Alarm::Shed, Alarm::Refused, Alarm::HeaderTimeout, Alarm::BodyTimeout, Alarm::AcceptFailed];

#[derive(Debug, Default)]
struct Tally {
    pending: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

/// Counts alarms and logs them, rate-limited.
#[derive(Debug)]
pub struct Alarms {
    limits: Limits,
    tallies: [Tally; KINDS.len()],
}

impl Alarms {
    /// Alarms about `limits`.
    pub fn new(limits: Limits) -> Alarms {
        Alarms { limits, tallies: Default::default() }
    }

    /// Counts one alarm; logs it now unless its kind was logged within
    /// [`INTERVAL`] (then the next [`Alarms::flush`] or alarm logs the count).
    pub fn raise(&self, alarm: Alarm, detail: Option<&std::io::Error>) {
        let tally = &self.tallies[alarm as usize];
        tally.pending.fetch_add(1, Ordering::Relaxed);
        let mut last = tally.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= INTERVAL) {
            *last = Some(Instant::now());
            self.log(alarm, tally.pending.swap(0, Ordering::Relaxed), detail);
        }
    }

    /// Logs the counts not logged yet.
    pub fn flush(&self) {
        for alarm in KINDS {
            let tally = &self.tallies[alarm as usize];
            let mut last = tally.last_logged.lock().unwrap_or_else(|e| e.into_inner());
            let count = tally.pending.swap(0, Ordering::Relaxed);
            if count > 0 {
                *last = Some(Instant::now());
                self.log(alarm, count, None);
            }
        }
    }

    fn log(&self, alarm: Alarm, count: u64, detail: Option<&std::io::Error>) {
        let Limits { max_connections, header_timeout, body_timeout, .. } = self.limits;
        match alarm {
            Alarm::Shed => tracing::warn!(
                count,
                max_connections,
                "connection limit reached: closed the connections that waited longest for a request"
            ),
            Alarm::Refused => tracing::warn!(
                count,
                max_connections,
                "connection limit reached with every connection busy: refused new connections"
            ),
            Alarm::HeaderTimeout => tracing::warn!(
                count,
                timeout = ?header_timeout,
                "closed connections that sent no whole request header in time"
            ),
            Alarm::BodyTimeout => tracing::warn!(
                count,
                timeout = ?body_timeout,
                "answered 408 to requests whose body stalled"
            ),
            Alarm::AcceptFailed => match detail {
                Some(error) => tracing::warn!(count, %error, "cannot accept connections"),
                None => tracing::warn!(count, "cannot accept connections"),
            },
        }
    }
}
