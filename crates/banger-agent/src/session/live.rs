//! One session: a process under a terminal the agent owns, whose output is
//! read all the time (never waiting for a client) into its history, its
//! log files, a terminal emulator that knows the screen, and the clients
//! attached now.
//!
//! Several clients may attach to a session at once. All see the same
//! output and every one may type, as in tmux by default (an attach with
//! `read_only` only watches); input from several clients interleaves
//! chunk by chunk. The terminal has one size: the most recent one any
//! attached client asked for, on attach or with a resize (a larger client
//! terminal shows the session in its top-left corner, a smaller one cuts
//! it). A client that falls behind the output skips ahead: it is sent the
//! current screen again and goes on from there, so the session never
//! waits for its slowest client.

use std::num::NonZeroU16;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use banger_agent_proto::{ErrorKind, ExecRequest, Reply, SessionInfo, SessionState, TtySize};
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::history::{History, HISTORY_LIMIT};
use super::store::{self, Log, StateFile};
use crate::log::log;
use crate::output::Reaped;
use crate::pty::PtyMaster;
use crate::reaper::Reaper;
use crate::requests::Refusal;
use crate::spawn::{self, ChildIo};

/// A session's terminal unless its start names one.
pub(crate) const DEFAULT_SIZE: TtySize = TtySize { rows: 24, cols: 80 };

/// Output chunks kept for attached clients that have not sent them yet;
/// one further behind skips ahead.
const LIVE_BACKLOG: usize = 64;

/// Typed chunks waiting for the terminal; a full queue makes the clients wait.
const INPUT_QUEUE: usize = 16;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct End {
    at: Option<u64>,
    code: Option<i32>,
    signal: Option<i32>,
    /// The agent restarted without learning how it ended.
    lost: bool,
}

struct State {
    pid: Option<u32>,
    size: TtySize,
    end: Option<End>,
    history: History,
    screen: vt100::Parser,
    /// Live output, while the process runs.
    live: Option<broadcast::Sender<Bytes>>,
    attached: u32,
    log: Option<Log>,
}

pub(crate) struct Session {
    pub(crate) name: String,
    argv: Vec<String>,
    pub(crate) started_at: u64,
    dir: PathBuf,
    state: Mutex<State>,
    /// Typed input, while the process runs.
    input: Option<mpsc::Sender<Bytes>>,
    master: Option<Arc<PtyMaster>>,
    reaper: Reaper,
    ended: watch::Sender<bool>,
}

/// What an attaching client gets: the screen as it is, then what follows.
pub(crate) struct View {
    pub(crate) screen: Bytes,
    /// `None` once the process ended.
    pub(crate) live: Option<broadcast::Receiver<Bytes>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn dimension(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN)
}

/// A terminal emulator of `size` that keeps the screen only (the history keeps the rest).
fn parser(size: TtySize) -> vt100::Parser {
    vt100::Parser::new(dimension(size.rows), dimension(size.cols), 0)
}

impl Session {
    /// Starts `exec` under a new terminal as the session `name`, kept in `dir`.
    pub(crate) fn start(
        name: &str,
        mut exec: ExecRequest,
        dir: PathBuf,
        reaper: &Reaper,
    ) -> Result<Arc<Session>, Refusal> {
        let size = *exec.tty.get_or_insert(DEFAULT_SIZE);
        let child = spawn::spawn(&exec, reaper)?;
        let ChildIo::Pty(master) = child.io else {
            unreachable!("a session always has a terminal");
        };
        let started_at = now();
        let log = match store::create_dir(&dir).and_then(|()| Log::create(&dir)) {
            Ok(log) => Some(log),
            Err(e) => {
                log!("cannot keep session {name} in {}: {e}; its output is kept in memory only", dir.display());
                None
            }
        };
        let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
        let session = Arc::new(Session {
            name: name.to_string(),
            argv: exec.argv.clone(),
            started_at,
            dir,
            state: Mutex::new(State {
                pid: Some(child.pid),
                size,
                end: None,
                history: History::new(HISTORY_LIMIT),
                screen: parser(size),
                live: Some(broadcast::channel(LIVE_BACKLOG).0),
                attached: 0,
                log,
            }),
            input: Some(input_tx),
            master: Some(master.clone()),
            reaper: reaper.clone(),
            ended: watch::channel(false).0,
        });
        session.persist(&session.lock());
        tokio::spawn(type_input(master.clone(), input_rx, session.ended.subscribe()));
        tokio::spawn(drive(session.clone(), master, child.exit));
        Ok(session)
    }

    /// A session an earlier agent left in `dir`: ended, or lost when its
    /// end was never recorded (its terminal went with that agent).
    pub(crate) fn restore(dir: &Path, reaper: &Reaper) -> std::io::Result<Session> {
        let state = store::read_state(dir)?;
        let end = End { at: state.ended_at, code: state.code, signal: state.signal, lost: !state.ended() };
        let mut history = History::new(HISTORY_LIMIT);
        let logs = store::read_logs(dir, HISTORY_LIMIT);
        history.push(&logs);
        let mut screen = parser(state.size);
        screen.process(&logs);
        Ok(Session {
            name: state.name,
            argv: state.argv,
            started_at: state.started_at,
            dir: dir.to_owned(),
            state: Mutex::new(State {
                pid: None,
                size: state.size,
                end: Some(end),
                history,
                screen,
                live: None,
                attached: 0,
                log: None,
            }),
            input: None,
            master: None,
            reaper: reaper.clone(),
            ended: watch::channel(true).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn is_running(&self) -> bool {
        self.lock().end.is_none()
    }

    pub(crate) fn info(&self) -> SessionInfo {
        let state = self.lock();
        let end = state.end;
        SessionInfo {
            name: self.name.clone(),
            argv: self.argv.clone(),
            state: match end {
                None => SessionState::Running,
                Some(End { lost: true, .. }) => SessionState::Lost,
                Some(_) => SessionState::Exited,
            },
            pid: state.pid,
            started_at: self.started_at,
            ended_at: end.and_then(|e| e.at),
            code: end.and_then(|e| e.code),
            signal: end.and_then(|e| e.signal),
            size: state.size,
            attached: state.attached,
        }
    }

    /// The reply that ends a stream following the session.
    pub(crate) fn exited(&self) -> Reply {
        let end = self.lock().end;
        Reply::Exited { code: end.and_then(|e| e.code), signal: end.and_then(|e| e.signal) }
    }

    fn persist(&self, state: &State) {
        let end = state.end.filter(|e| !e.lost);
        let file = StateFile {
            name: self.name.clone(),
            argv: self.argv.clone(),
            started_at: self.started_at,
            pid: state.pid,
            size: state.size,
            ended_at: end.and_then(|e| e.at),
            code: end.and_then(|e| e.code),
            signal: end.and_then(|e| e.signal),
        };
        if let Err(e) = store::write_state(&self.dir, &file) {
            if state.log.is_some() {
                log!("cannot record the state of session {} in {}: {e}", self.name, self.dir.display());
            }
        }
    }

    /// Takes what the terminal's programs wrote.
    fn output(&self, bytes: &Bytes) {
        let mut state = self.lock();
        state.screen.process(bytes);
        state.history.push(bytes);
        if let Some(log) = &mut state.log {
            log.write(bytes);
        }
        if let Some(live) = &state.live {
            // No receivers is not an error: nobody is attached.
            let _ = live.send(bytes.clone());
        }
    }

    /// The process ended (`None`: its status was lost): live output ends
    /// after what was sent, and waiters are told.
    fn finish(&self, status: Option<ExitStatus>) {
        let mut state = self.lock();
        state.end = Some(End {
            at: Some(now()),
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            lost: status.is_none(),
        });
        state.pid = None;
        state.live = None;
        self.persist(&state);
        drop(state);
        self.ended.send_replace(true);
    }

    /// The screen as it is now and the live output from that point on,
    /// taken together so nothing is missed or sent twice.
    pub(crate) fn view(&self) -> View {
        let state = self.lock();
        let screen = state.screen.screen();
        let mut bytes = Vec::new();
        if screen.alternate_screen() {
            bytes.extend_from_slice(b"\x1b[?1049h");
        }
        bytes.extend_from_slice(screen.state_formatted().as_bytes());
        View { screen: bytes.into(), live: state.live.as_ref().map(|l| l.subscribe()) }
    }

    /// The history (or its last `tail` lines), and with `follow` the live
    /// output after it.
    pub(crate) fn history(&self, tail: Option<u64>, follow: bool) -> (Vec<u8>, Option<broadcast::Receiver<Bytes>>) {
        let state = self.lock();
        let live = if follow { state.live.as_ref().map(|l| l.subscribe()) } else { None };
        (state.history.tail(tail), live)
    }

    /// Sets the terminal's size (the most recent request from any client wins).
    pub(crate) fn resize(&self, size: TtySize) {
        let mut state = self.lock();
        if state.end.is_some() || size.rows == 0 || size.cols == 0 {
            return;
        }
        state.size = size;
        state.screen.set_size(dimension(size.rows), dimension(size.cols));
        if let Some(master) = &self.master {
            if let Err(e) = master.resize(size) {
                log!("cannot resize the terminal of session {}: {e}", self.name);
            }
        }
        self.persist(&state);
    }

    /// A place in the input queue, for typing one chunk.
    pub(crate) async fn input_slot(&self) -> Option<mpsc::OwnedPermit<Bytes>> {
        self.input.clone()?.reserve_owned().await.ok()
    }

    /// Signals the session's process group; nothing to do once it ended.
    pub(crate) fn signal(&self, signal: i32) -> Result<(), Refusal> {
        let Some(pid) = self.lock().pid else { return Ok(()) };
        match self.reaper.signal_group(pid, signal) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(Refusal::new(
                ErrorKind::InvalidArgument,
                format!("cannot send signal {signal} to session {}: {e}", self.name),
            )),
            _ => Ok(()),
        }
    }

    /// Waits until the process ended.
    pub(crate) async fn wait(&self) {
        let _ = self.ended.subscribe().wait_for(|ended| *ended).await;
    }

    /// Counts a client as attached while the guard lives.
    pub(crate) fn attach(self: &Arc<Session>) -> Attached {
        self.lock().attached += 1;
        Attached(self.clone())
    }
}

/// An attached client, counted in [`SessionInfo::attached`].
pub(crate) struct Attached(Arc<Session>);

impl Drop for Attached {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.attached = state.attached.saturating_sub(1);
    }
}

/// Reads the terminal until the session's process is done, then records its end.
async fn drive(session: Arc<Session>, master: Arc<PtyMaster>, exit: oneshot::Receiver<ExitStatus>) {
    let reaped = Reaped::new();
    let mut output = reaped.output(master).named("session terminal");
    let read = async {
        while let Some(bytes) = output.next().await {
            session.output(&bytes);
        }
    };
    let status = async {
        let status = exit.await.ok();
        reaped.now();
        status
    };
    let ((), status) = tokio::join!(read, status);
    session.finish(status);
}

/// Types the queued input into the terminal, until the session ends.
async fn type_input(master: Arc<PtyMaster>, mut input: mpsc::Receiver<Bytes>, mut ended: watch::Receiver<bool>) {
    loop {
        let typed = tokio::select! {
            chunk = input.recv() => match chunk {
                Some(chunk) => chunk,
                None => return,
            },
            _ = ended.wait_for(|ended| *ended) => return,
        };
        tokio::select! {
            written = master.write_all(&typed) => if written.is_err() { return },
            _ = ended.wait_for(|ended| *ended) => return,
        }
    }
}
