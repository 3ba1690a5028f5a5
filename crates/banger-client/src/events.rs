//! Reading the daemon's Server-Sent Events stream. Event types a newer
//! daemon added and this client does not know are skipped, so the stream
//! goes on with the ones it does.

use banger_api::Event;
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::{ClientError, Result};

/// Events as the daemon sends them.
pub struct EventStream {
    body: Incoming,
    buffer: BytesMut,
}

impl EventStream {
    pub(crate) fn new(body: Incoming) -> EventStream {
        EventStream { body, buffer: BytesMut::new() }
    }

    /// The next event this client knows, or `None` when the daemon closes
    /// the stream. Never [`Event::Unknown`]: those are skipped.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            if let Some(end) = find(&self.buffer, b"\n\n") {
                let block = self.buffer.split_to(end);
                self.buffer.advance(2);
                if let Some(event) = parse_block(&block)? {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame.map_err(ClientError::Http)?.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One SSE block: `data:` lines hold the JSON; comments (keep-alives),
/// other fields and events of a type this client does not know are ignored.
fn parse_block(block: &[u8]) -> Result<Option<Event>> {
    let text = String::from_utf8_lossy(block);
    let data: Vec<&str> =
        text.lines().filter_map(|line| line.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
    if data.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str(&data.join("\n")) {
        Ok(Event::Unknown) => Ok(None),
        Ok(event) => Ok(Some(event)),
        Err(e) => Err(ClientError::Protocol(format!("bad event: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_data_and_skips_comments() {
        assert!(parse_block(b": keep-alive").unwrap().is_none());
        let event = parse_block(br#"data: {"type":"deleted","kind":"kernel","name":"k"}"#).unwrap().unwrap();
        assert_eq!(event, Event::Deleted { kind: banger_api::ObjectKind::Kernel, name: "k".into() });
    }

    #[test]
    fn skips_event_types_it_does_not_know() {
        assert!(parse_block(br#"data: {"type":"vm_address","name":"dev","address":"10.0.0.2"}"#).unwrap().is_none());
        assert!(parse_block(br#"data: {"type":"created","kind":"kernel"}"#).is_err(), "a known type still checks");
    }
}
