//! What a client and the daemon say over the WebSocket routes that carry a
//! process's bytes: `GET /v1/vms/{name}/exec`, `.../sessions/{session}/attach`
//! and `.../sessions/{session}/logs`. Any WebSocket client can speak it, a
//! browser's included.
//!
//! # Messages
//!
//! - **Text messages** are JSON control messages with a `type`:
//!   [`ClientMessage`] from the client, [`ServerMessage`] from the daemon.
//! - **Binary messages** carry bytes: the first byte is the channel
//!   ([`Channel`]: 0 stdin, 1 stdout, 2 stderr), the rest is the data, as
//!   Kubernetes' `channel.k8s.io` does. A client sends only stdin; the
//!   daemon sends stdout and stderr (with a terminal, everything is stdout).
//!
//! # An exec
//!
//! ```text
//! client                                   daemon
//!   {"type":"start","argv":["sh"],"stdin":true}  ─▶
//!                                         ◀─ {"type":"started","pid":42}
//!   [0, ...stdin bytes]                    ─▶
//!                                         ◀─ [1, ...stdout bytes] / [2, ...stderr bytes]
//!   {"type":"resize","rows":40,"cols":120} ─▶   (with a terminal)
//!   {"type":"signal","signal":2}           ─▶
//!   {"type":"stdin_eof"}                   ─▶
//!                                         ◀─ {"type":"exited","code":0,"signal":null,"exit_status":0}
//!                                         ◀─ close (1000)
//! ```
//!
//! The first message must be `start` ([`ExecStart`]). Without `stdin: true`
//! the command's input is empty from the start. An `error` before
//! `started` means the command never ran (no such VM, the VM is not
//! running, no such program) and a close follows; an `error` after it is
//! a refusal of one message (a signal the guest could not deliver) and the
//! command runs on. `exited` comes after all of the command's output.
//!
//! # A session attach
//!
//! The size and mode are in the query (`?rows=24&cols=80&read_only=false`),
//! so there is no `start`: the daemon answers `started` (the session's
//! process id), then the session's screen as it is and its live output
//! as stdout. Stdin is typed into the session (unless read-only) and
//! `resize` changes its size. Closing the WebSocket detaches; the session
//! runs on. When its process ends the daemon sends `exited` and closes.
//!
//! # Session logs
//!
//! `?follow=true&tail=N`: the session's output as stdout, the last `tail`
//! lines of it first. Without `follow` the daemon closes after the history;
//! with it, live output follows until the process ends (`exited`).
//!
//! # Flow control
//!
//! The daemon reads the next client message only once the guest has room
//! for the last one, and reads more output from the guest only as the
//! client takes what was sent: a client that stops reading stops its own
//! command's output (the command blocks on a full pipe), nothing is
//! dropped, and memory stays bounded. A client that closes the WebSocket
//! (or whose connection breaks) during an exec hangs its command up.
//!
//! # Growth
//!
//! As elsewhere in the API: what the daemon accepts refuses unknown fields
//! (a misspelt `start` option is an `error`), what it sends may grow
//! (clients ignore unknown fields, and unknown message types decode as
//! [`ServerMessage::Unknown`], which clients skip).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// The largest message either side sends, in bytes: bigger stdin must be
/// split (a client may send as many messages as it likes).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// A binary message's first byte: which byte stream the rest belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The process's input (client to daemon).
    Stdin = 0,
    /// The process's output (daemon to client); with a terminal, all of it.
    Stdout = 1,
    /// The process's error output (daemon to client).
    Stderr = 2,
}

impl Channel {
    /// The channel a binary message belongs to and its data; `None` for an
    /// empty message or an unknown channel byte.
    pub fn split(message: &[u8]) -> Option<(Channel, &[u8])> {
        let (&first, data) = message.split_first()?;
        let channel = match first {
            0 => Channel::Stdin,
            1 => Channel::Stdout,
            2 => Channel::Stderr,
            _ => return None,
        };
        Some((channel, data))
    }

    /// A binary message of this channel carrying `data`.
    pub fn message(self, data: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(data.len() + 1);
        message.push(self as u8);
        message.extend_from_slice(data);
        message
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What a client sends as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Starts the exec: the first message on the exec route (and only there).
    Start(ExecStart),
    /// The client's terminal changed size (an exec with a terminal, an attach).
    Resize(TermSize),
    /// Sends a signal to the command (its process group).
    Signal {
        /// A Linux signal number: 1 SIGHUP, 2 SIGINT, 9 SIGKILL, 15 SIGTERM.
        signal: i32,
    },
    /// The command's input ends (it reads end of file). (A struct variant,
    /// so a field it does not have is refused, as on the others.)
    StdinEof {},
}

/// How to run a command (`start`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    /// The program and its arguments; the program is looked up on the guest's `PATH`.
    pub argv: Vec<String>,
    /// Environment variables, over the guest agent's defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory (default: the user's home, else `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run as this user, a name or a uid (default root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run under a terminal (a PTY) of this size; all output is then stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TermSize>,
    /// `TERM` for a command under a terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// The client sends input (stdin messages, then `stdin_eof`); without
    /// it the command's input is empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
}

/// What the daemon sends as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The command runs (or the session is attached).
    Started {
        /// Its process id in the guest (absent for a session that has ended).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    /// The command (or the session's process) ended; all its output came before this.
    Exited {
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal that killed it, when one did.
        signal: Option<i32>,
        /// As a shell reports it: the code, or 128 + the signal.
        exit_status: i32,
    },
    /// Something failed. Before `started` nothing ran and a close follows.
    Error {
        /// The same stable code the JSON API uses (`not_found` for no such
        /// VM or program, `conflict` for a VM that is not running, ...).
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
        /// The guest refused (no such program or session, a bad user or
        /// directory), as opposed to the daemon (no such VM, not running).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        guest: bool,
    },
    /// The guest's side of a connection (`/v1/vms/{name}/connect`) shut its
    /// writing half: nothing more comes on channel 1.
    StdoutEof {},
    /// A message this crate does not know: clients skip it.
    #[serde(other)]
    Unknown,
}

impl ServerMessage {
    /// `exited` for a process that ended with `code` or was killed by `signal`.
    pub fn exited(code: Option<i32>, signal: Option<i32>) -> ServerMessage {
        ServerMessage::Exited { code, signal, exit_status: exit_status(code, signal) }
    }
}

/// A shell's `$?` for a process that ended with `code` or by `signal`:
/// the code, or 128 + the signal number.
pub fn exit_status(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_messages_carry_their_channel_first() {
        assert_eq!(Channel::Stdout.message(b"hi"), b"\x01hi");
        assert_eq!(Channel::split(b"\x00in"), Some((Channel::Stdin, &b"in"[..])));
        assert_eq!(Channel::split(b"\x02"), Some((Channel::Stderr, &b""[..])));
        assert_eq!(Channel::split(b""), None);
        assert_eq!(Channel::split(b"\x09x"), None);
    }

    #[test]
    fn the_wire_form_is_plain_json() {
        let start = ClientMessage::Start(ExecStart {
            argv: vec!["sh".into()],
            tty: Some(TermSize { rows: 24, cols: 80 }),
            stdin: true,
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_string(&start).unwrap(),
            r#"{"type":"start","argv":["sh"],"tty":{"rows":24,"cols":80},"stdin":true}"#
        );
        let parsed: ClientMessage = serde_json::from_str(r#"{"type":"resize","rows":1,"cols":2}"#).unwrap();
        assert_eq!(parsed, ClientMessage::Resize(TermSize { rows: 1, cols: 2 }));
        let parsed: ClientMessage = serde_json::from_str(r#"{"type":"stdin_eof"}"#).unwrap();
        assert_eq!(parsed, ClientMessage::StdinEof {});
        assert_eq!(
            serde_json::to_string(&ServerMessage::exited(None, Some(9))).unwrap(),
            r#"{"type":"exited","code":null,"signal":9,"exit_status":137}"#
        );
        let error = ServerMessage::Error { code: ErrorCode::NotFound, message: "m".into(), guest: false };
        assert_eq!(serde_json::to_string(&error).unwrap(), r#"{"type":"error","code":"not_found","message":"m"}"#);
    }

    #[test]
    fn the_client_side_refuses_what_it_does_not_know_and_the_daemon_side_grows() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"start","argv":["x"],"ttty":{}}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"teleport"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"signal","signal":2,"extra":1}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"stdin_eof","now":true}"#).is_err());
        assert_eq!(serde_json::to_string(&ClientMessage::StdinEof {}).unwrap(), r#"{"type":"stdin_eof"}"#);
        let later: ServerMessage = serde_json::from_str(r#"{"type":"started","pid":3,"extra":1}"#).unwrap();
        assert_eq!(later, ServerMessage::Started { pid: Some(3) });
        let unknown: ServerMessage = serde_json::from_str(r#"{"type":"progress","done":1}"#).unwrap();
        assert_eq!(unknown, ServerMessage::Unknown);
    }

    #[test]
    fn exit_status_is_a_shells() {
        assert_eq!(exit_status(Some(3), None), 3);
        assert_eq!(exit_status(None, Some(2)), 130);
    }
}
