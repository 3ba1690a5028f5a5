//! `GET /v1/vms/{name}/files`: a file copy as a tar stream over the
//! daemon's WebSocket. The caller writes (copy in) or reads (copy out)
//! the tar itself; the daemon only relays it to and from the guest.

use crate::stream::{StreamEvents, StreamSender};
use crate::{segment, Client, Result};

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// Host to guest: send the tar through the sender (`stdin`, then
    /// `stdin_eof`); the stream closes once the guest wrote it all.
    In,
    /// Guest to host: the tar arrives as `Stdout` events; the stream
    /// closes at its end.
    Out,
}

impl Client {
    /// Opens a copy of guest `path` (absolute) in VM `vm`. A refusal
    /// before anything moves (a bad path, a VM not running) is an error
    /// here; one later (no such path in the guest, a full disk) is an
    /// `Error` event, after which the stream ends.
    pub async fn copy_stream(
        &self,
        vm: &str,
        path: &str,
        direction: CopyDirection,
    ) -> Result<(StreamSender, StreamEvents)> {
        let direction = match direction {
            CopyDirection::In => "in",
            CopyDirection::Out => "out",
        };
        self.websocket(&format!("/v1/vms/{}/files?path={}&direction={direction}", segment(vm), query_value(path))).await
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_keep_slashes_and_escape_the_rest() {
        assert_eq!(super::query_value("/work/a b&c=d"), "/work/a%20b%26c%3Dd");
        assert_eq!(super::query_value("/é"), "/%C3%A9");
    }
}
