//! The JSON messages of control frames. The first control frame the host
//! sends on a new stream says what the stream is for (an exec, a session
//! attach, a file copy, ...); the rest of the stream's traffic follows from it.
//!
//! Messages are lenient both ways: unknown fields are ignored and an unknown
//! `type` decodes as `Unknown`, so either side may grow without breaking the
//! other; what a peer cannot do, it answers with an [`Reply::Error`].

use serde::{Deserialize, Serialize};

use crate::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Features a side may offer in its hello; the conversation uses those both offer.
pub mod features {
    /// Commands under a PTY (`ExecRequest::tty`).
    pub const TTY: &str = "tty";
    /// Guest sessions.
    pub const SESSIONS: &str = "sessions";
    /// File copy as tar streams.
    pub const COPY: &str = "copy";
    /// Guest stats and listening sockets.
    pub const STATS: &str = "stats";
    /// TCP connections to the guest's own ports (ssh, port forwards).
    pub const CONNECT: &str = "connect";
}

/// A hello: the versions and features the sender speaks, and the window it
/// grants each stream (bytes the other side may send before credit returns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The newest version the sender speaks (in a reply: the one chosen).
    pub protocol: u32,
    /// The oldest version the sender speaks.
    #[serde(default)]
    pub min_protocol: Option<u32>,
    /// The sender's build version (set by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// What the sender can do.
    #[serde(default)]
    pub features: Vec<String>,
    /// The sender's receive window per stream, in bytes.
    #[serde(default)]
    pub window: Option<u32>,
}

impl Hello {
    /// This build's hello, with every feature and the default window.
    pub fn ours() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            min_protocol: Some(MIN_PROTOCOL_VERSION),
            agent_version: None,
            features: [features::TTY, features::SESSIONS, features::COPY, features::STATS, features::CONNECT]
                .map(String::from)
                .to_vec(),
            window: Some(crate::mux::DEFAULT_WINDOW),
        }
    }

    /// The version both sides speak, if any: the newest in both ranges.
    pub fn negotiate(&self, other: &Hello) -> Option<u32> {
        let newest = self.protocol.min(other.protocol);
        let oldest = self.min_protocol.unwrap_or(self.protocol).max(other.min_protocol.unwrap_or(other.protocol));
        (newest >= oldest).then_some(newest)
    }

    /// Whether the sender offered `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Host-to-guest control messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Opens the conversation (stream 0).
    Hello(Hello),
    /// Runs a command on this stream, which must be new. Its stdin comes
    /// as stdin data (a FIN ends it); its output goes out as stdout and
    /// stderr data (with a TTY, all of it as stdout); `exited` ends it.
    Exec(ExecRequest),
    /// Sends a signal to the process (group) running on this stream.
    Signal {
        /// Signal number (15 for SIGTERM, 9 for SIGKILL).
        signal: i32,
    },
    /// The client's terminal changed size (an exec with a TTY, an attach).
    Resize(TtySize),
    /// Syncs the guest's disks and powers it off. No reply: the VM ends.
    Poweroff,
    /// A version-1 keepalive, answered with `pong`; version 2 uses ping frames.
    Ping,
    /// Starts a session: a process under a PTY that outlives every client.
    /// Answered with `session`.
    SessionStart(SessionStart),
    /// Lists the sessions; answered with `sessions`.
    SessionList,
    /// Attaches to a session: answered with `session`, then the screen as it
    /// is now and the live output as stdout data; stdin data is typed into
    /// it (unless `read_only`). The stream ends with `exited` when the
    /// session's process ends, or when either side closes it (a detach).
    SessionAttach {
        /// The session's name.
        name: String,
        /// The client's terminal.
        #[serde(default)]
        size: Option<TtySize>,
        /// Watch without typing.
        #[serde(default)]
        read_only: bool,
    },
    /// The session's history as stdout data: the last `tail` lines (all that
    /// is kept by default), then with `follow` its live output until it
    /// ends; `exited` ends a followed session's stream, `done` any other.
    SessionLogs {
        /// The session's name.
        name: String,
        /// Keep streaming new output.
        #[serde(default)]
        follow: bool,
        /// At most this many of the last lines.
        #[serde(default)]
        tail: Option<u64>,
    },
    /// Input for a session without attaching: the stdin data that follows
    /// (until its FIN) is typed into it; answered with `done`.
    SessionSend {
        /// The session's name.
        name: String,
    },
    /// Signals a session's process group; answered with `done`.
    SessionStop {
        /// The session's name.
        name: String,
        /// The signal (SIGTERM by default).
        #[serde(default)]
        signal: Option<i32>,
    },
    /// Waits for a session to end; answered with `exited` (at once if it has).
    SessionWait {
        /// The session's name.
        name: String,
    },
    /// Forgets an ended session and its logs; answered with `done`.
    SessionRemove {
        /// The session's name.
        name: String,
    },
    /// A tar stream follows as stdin data (until its FIN), holding one top
    /// entry (a file, directory or symlink and what is below it); it is
    /// written as `dest` (a new name in an existing directory), or into
    /// `dest` when that is an existing directory. Answered with `done`.
    CopyIn {
        /// Where it goes, an absolute guest path.
        dest: String,
    },
    /// The agent sends `path` (and what is below it) as a tar stream of one
    /// top entry named after it, as stdout data, then `done`. Symlinks are
    /// sent as symlinks.
    CopyOut {
        /// What to send, an absolute guest path.
        path: String,
    },
    /// The guest's counters; answered with `stats`.
    Stats,
    /// The guest's listening sockets; answered with `ports`.
    Ports,
    /// Opens a TCP connection to `port` on the guest's loopback (127.0.0.1,
    /// else ::1); answered with `connected`, then the stream carries the
    /// connection's bytes: stdin data is written to it (a FIN shuts its
    /// writing side), what it sends comes as stdout data (a FIN when it
    /// shut its own). The agent closes the stream once both are shut; a
    /// reset from either side drops the connection.
    Connect {
        /// The guest's port.
        port: u16,
    },
    /// A request this build does not know.
    #[serde(other)]
    Unknown,
}

/// A command to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up on `PATH`.
    pub argv: Vec<String>,
    /// Extra environment variables, over the agent's defaults.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (default: the user's home, else `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run as this user (a name or a uid; default root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run under a PTY of this size; its output all comes as stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
    /// `TERM` for a command with a PTY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// A session to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SessionStart {
    /// Its name, unique in the guest.
    pub name: String,
    /// The command and its environment.
    #[serde(flatten)]
    pub exec: ExecRequest,
}

/// What a session is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Its process runs.
    Running,
    /// Its process ended.
    Exited,
    /// The agent restarted and its process is gone with no exit status.
    Lost,
    /// A state this build does not know.
    #[serde(other)]
    Unknown,
}

/// A session as the guest knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Its name.
    pub name: String,
    /// Its command.
    pub argv: Vec<String>,
    /// Running, exited or lost.
    pub state: SessionState,
    /// Its process id while it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// When it started, in seconds since the Unix epoch (guest clock).
    pub started_at: u64,
    /// When it ended.
    #[serde(default)]
    pub ended_at: Option<u64>,
    /// Its exit code, once it exited normally.
    #[serde(default)]
    pub code: Option<i32>,
    /// The signal that killed it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The size of its terminal.
    pub size: TtySize,
    /// Clients attached now.
    #[serde(default)]
    pub attached: u32,
}

/// Guest-to-host control messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Answers the host's hello (stream 0) with the version chosen.
    Hello(Hello),
    /// The command started.
    Started {
        /// Its process id in the guest.
        pid: u32,
    },
    /// The command (or session) ended; all its output was sent before this.
    Exited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Signal number, when a signal killed it.
        signal: Option<i32>,
    },
    /// The request on this stream failed (no such program, no such session).
    Error {
        /// What went wrong.
        message: String,
        /// What kind of failure, for the host to map onto its error codes.
        #[serde(default)]
        kind: ErrorKind,
    },
    /// Answers a version-1 ping.
    Pong,
    /// A session (answers `session_start` and `session_attach`).
    Session(SessionInfo),
    /// All sessions.
    Sessions {
        /// Oldest first.
        sessions: Vec<SessionInfo>,
    },
    /// The guest's counters.
    Stats(GuestStats),
    /// The guest's listening sockets.
    Ports {
        /// TCP and UDP listeners.
        ports: Vec<Listener>,
    },
    /// The request is done.
    Done,
    /// The connection `connect` asked for is open.
    Connected,
    /// A reply this build does not know.
    #[serde(other)]
    Unknown,
}

/// What kind of failure a [`Reply::Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong (no such program, a bad path).
    #[default]
    InvalidArgument,
    /// What it names does not exist (a session, a file).
    NotFound,
    /// It exists already (a session name).
    AlreadyExists,
    /// The guest refused (permissions).
    PermissionDenied,
    /// The agent cannot do it.
    Unsupported,
    /// Something failed in the guest.
    Internal,
    /// A kind this build does not know.
    #[serde(other)]
    Unknown,
}

/// The guest's counters at one moment; rates come from two of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GuestStats {
    /// Seconds since the guest booted.
    pub uptime_secs: f64,
    /// CPUs online.
    pub cpus: u32,
    /// Time all CPUs spent, in clock ticks (`USER_HZ`, 100 a second).
    pub cpu: CpuTimes,
    /// The 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    /// Memory, in bytes.
    pub memory: MemoryStats,
    /// Mounted filesystems backed by a block device.
    pub disks: Vec<DiskStats>,
    /// Network interfaces other than loopback.
    pub net: Vec<NetStats>,
}

/// Time spent by all CPUs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CpuTimes {
    /// Running user code (nice included).
    pub user: u64,
    /// Running the kernel (interrupts included).
    pub system: u64,
    /// Idle (waiting for I/O included).
    pub idle: u64,
    /// Taken by the host.
    pub steal: u64,
}

impl CpuTimes {
    /// All ticks.
    pub fn total(&self) -> u64 {
        self.user + self.system + self.idle + self.steal
    }
}

/// Memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemoryStats {
    /// All memory the guest has.
    pub total: u64,
    /// What new programs could get without swapping.
    pub available: u64,
    /// Unused.
    pub free: u64,
}

/// One filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DiskStats {
    /// Where it is mounted.
    pub mount: String,
    /// Its device.
    pub device: String,
    /// Size, in bytes.
    pub total: u64,
    /// Used, in bytes.
    pub used: u64,
    /// Available to unprivileged users, in bytes.
    pub available: u64,
}

/// One network interface's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetStats {
    /// Its name.
    pub interface: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The local address (`0.0.0.0`, `::`, `127.0.0.1`, ...).
    pub address: String,
    /// The local port.
    pub port: u16,
    /// The owning process, when the agent can tell.
    #[serde(default)]
    pub pid: Option<u32>,
    /// That process's name.
    #[serde(default)]
    pub process: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_newest_common_version() {
        let range = |min, max| Hello { protocol: max, min_protocol: Some(min), ..Hello::ours() };
        assert_eq!(range(2, 3).negotiate(&range(2, 2)), Some(2));
        assert_eq!(range(2, 4).negotiate(&range(3, 5)), Some(4));
        assert_eq!(range(2, 2).negotiate(&range(3, 3)), None);
        // A peer that names one version only.
        let one = Hello { protocol: 1, min_protocol: None, ..Hello::ours() };
        assert_eq!(range(2, 2).negotiate(&one), None);
        assert_eq!(range(1, 2).negotiate(&one), Some(1));
    }

    #[test]
    fn unknown_fields_and_types_are_not_errors() {
        let request: Request = serde_json::from_str(r#"{"type":"exec","argv":["true"],"future":1}"#).unwrap();
        assert_eq!(request, Request::Exec(ExecRequest { argv: vec!["true".into()], ..Default::default() }));
        let request: Request = serde_json::from_str(r#"{"type":"teleport","to":"mars"}"#).unwrap();
        assert_eq!(request, Request::Unknown);
        let reply: Reply = serde_json::from_str(r#"{"type":"error","message":"m","kind":"quantum"}"#).unwrap();
        assert_eq!(reply, Reply::Error { message: "m".into(), kind: ErrorKind::Unknown });
        // A version-1 hello still parses.
        let hello: Reply = serde_json::from_str(r#"{"type":"hello","protocol":1,"agent_version":"0.1.0"}"#).unwrap();
        assert!(matches!(hello, Reply::Hello(Hello { protocol: 1, min_protocol: None, .. })));
    }

    /// The wire form of each message, checked in: changing it breaks
    /// agents already inside guests, so it must be a deliberate act (and,
    /// where old peers would misread it, a version bump).
    #[test]
    fn message_schema_snapshot() {
        let size = TtySize { rows: 24, cols: 80 };
        let exec = ExecRequest {
            argv: vec!["uname".into(), "-a".into()],
            env: vec![("K".into(), "V".into())],
            cwd: Some("/".into()),
            user: Some("dev".into()),
            tty: Some(size),
            term: Some("xterm-256color".into()),
        };
        let session = SessionInfo {
            name: "s".into(),
            argv: vec!["sh".into()],
            state: SessionState::Exited,
            pid: None,
            started_at: 1,
            ended_at: Some(2),
            code: Some(0),
            signal: None,
            size,
            attached: 0,
        };
        let requests = [
            Request::Hello(Hello::ours()),
            Request::Exec(exec.clone()),
            Request::Signal { signal: 15 },
            Request::Resize(size),
            Request::Poweroff,
            Request::Ping,
            Request::SessionStart(SessionStart {
                name: "s".into(),
                exec: ExecRequest { argv: vec!["sh".into()], ..Default::default() },
            }),
            Request::SessionList,
            Request::SessionAttach { name: "s".into(), size: Some(size), read_only: false },
            Request::SessionLogs { name: "s".into(), follow: true, tail: Some(10) },
            Request::SessionSend { name: "s".into() },
            Request::SessionStop { name: "s".into(), signal: Some(15) },
            Request::SessionWait { name: "s".into() },
            Request::SessionRemove { name: "s".into() },
            Request::CopyIn { dest: "/root".into() },
            Request::CopyOut { path: "/etc/hostname".into() },
            Request::Stats,
            Request::Ports,
            Request::Connect { port: 22 },
        ];
        let replies = [
            Reply::Hello(Hello { agent_version: Some("0.1.0".into()), ..Hello::ours() }),
            Reply::Started { pid: 42 },
            Reply::Exited { code: Some(3), signal: None },
            Reply::Error { message: "no such session".into(), kind: ErrorKind::NotFound },
            Reply::Pong,
            Reply::Session(session.clone()),
            Reply::Sessions { sessions: vec![session] },
            Reply::Stats(GuestStats {
                disks: vec![DiskStats::default()],
                net: vec![NetStats::default()],
                ..Default::default()
            }),
            Reply::Ports {
                ports: vec![Listener {
                    protocol: "tcp".into(),
                    address: "0.0.0.0".into(),
                    port: 80,
                    pid: Some(1),
                    process: Some("httpd".into()),
                }],
            },
            Reply::Done,
            Reply::Connected,
        ];
        let mut samples: Vec<String> = requests.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        samples.extend(replies.iter().map(|r| serde_json::to_string(r).unwrap()));
        let expected = include_str!("../schema.snapshot").lines().collect::<Vec<_>>();
        assert_eq!(samples, expected, "update schema.snapshot only with a deliberate protocol change");
    }
}
