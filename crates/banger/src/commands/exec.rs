//! `banger vm exec`: a command in a VM, its output byte for byte, its
//! input with `-i`, a terminal with `-t`, its exit status as banger's.

use std::collections::BTreeMap;

use banger_api::stream::{ExecStart, TermSize};
use banger_api::ErrorCode;
use banger_client::{StreamEvent, StreamEvents, StreamSender};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::terminal::{self, RawMode};
use crate::Context;

/// What `vm exec` was asked.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// VM name.
    pub name: String,
    /// Send stdin to the command (without it the command reads end of file at once).
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command under a terminal (a PTY): the local terminal goes
    /// raw, so Ctrl-C and the like reach the command as keys.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable (`K=V`, or `K` for this shell's value); repeatable.
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// The working directory in the guest.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The user to run as in the guest, a name or a uid [default: root].
    #[arg(short, long)]
    pub user: Option<String>,
    /// The command and its arguments (after NAME; `--` is optional).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Why `vm exec` has no exit status from the command.
pub enum ExecFailure {
    /// The guest could not start it (no such program, user or directory).
    NotStarted(banger_api::ApiError),
    /// banger itself failed (daemon, connection, VM state).
    Banger(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for ExecFailure {
    fn from(error: E) -> Self {
        ExecFailure::Banger(error.into())
    }
}

/// Runs the command; returns the exit status banger exits with. banger's
/// own failures use what a command rarely does, as ssh and docker do: 126
/// for a program the guest may not run, 127 for one it cannot start
/// otherwise (no such program, user or directory), 255 for anything else.
pub async fn run(ctx: &Context, args: ExecArgs) -> i32 {
    match exec(ctx, args).await {
        Ok(status) => status,
        Err(ExecFailure::NotStarted(error)) => {
            eprintln!("error: {}", error.message);
            if error.code == ErrorCode::PermissionDenied {
                126
            } else {
                127
            }
        }
        Err(ExecFailure::Banger(error)) => {
            eprintln!("error: {error:#}");
            255
        }
    }
}

async fn exec(ctx: &Context, args: ExecArgs) -> Result<i32, ExecFailure> {
    let local_tty = args.tty && terminal::stdin_is_terminal();
    let start = ExecStart {
        argv: args.command,
        env: environment(&args.env)?,
        cwd: args.workdir,
        user: args.user,
        tty: args.tty.then(|| terminal::size().unwrap_or(terminal::DEFAULT_SIZE)),
        term: args.tty.then(|| std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into())),
        stdin: args.interactive,
    };
    let (sender, mut events) = ctx.client.exec_stream(&args.name, start).await?;
    match events.next().await? {
        Some(StreamEvent::Started { .. }) => {}
        Some(StreamEvent::Error { error, guest: true }) => return Err(ExecFailure::NotStarted(error)),
        Some(StreamEvent::Error { error, guest: false }) => return Err(banger_client::ClientError::Api(error).into()),
        Some(other) => return Err(anyhow::anyhow!("bangerd sent {other:?} before the command started").into()),
        None => return Err(anyhow::anyhow!("bangerd closed the exec stream before the command started").into()),
    }
    // Put back when this function returns, whichever way.
    let raw = if local_tty { Some(RawMode::enable()?) } else { None };
    let mut helpers = tokio::task::JoinSet::new();
    if args.interactive {
        helpers.spawn(pump_stdin(sender.clone()));
    }
    helpers.spawn(forward_signals(sender.clone()));
    if args.tty {
        helpers.spawn(forward_resizes(sender.clone()));
    }
    let status = relay_output(&mut events).await;
    helpers.abort_all();
    drop(raw);
    status
}

/// `-e` values as the environment to send.
fn environment(vars: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    vars.iter()
        .map(|var| match var.split_once('=') {
            Some(("", _)) => anyhow::bail!("-e {var:?}: the variable has no name"),
            Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
            None => match std::env::var(var) {
                Ok(value) => Ok((var.clone(), value)),
                Err(_) => anyhow::bail!("-e {var}: not set here; give it a value with -e {var}=VALUE"),
            },
        })
        .collect()
}

/// Writes the command's output as it comes, and returns its exit status.
pub async fn relay_output(events: &mut StreamEvents) -> Result<i32, ExecFailure> {
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    loop {
        match events.next().await? {
            Some(StreamEvent::Stdout(data)) => {
                stdout.write_all(&data).await?;
                stdout.flush().await?;
            }
            Some(StreamEvent::Stderr(data)) => {
                stderr.write_all(&data).await?;
                stderr.flush().await?;
            }
            Some(StreamEvent::Exited { exit_status, .. }) => return Ok(exit_status.clamp(0, 255)),
            // The command runs on (a signal it could not be sent, say).
            Some(StreamEvent::Error { error, .. }) => eprintln!("banger: {}", error.message),
            Some(StreamEvent::Started { .. } | StreamEvent::StdoutEof) => {}
            None => return Err(anyhow::anyhow!("the exec stream closed before the command ended").into()),
        }
    }
}

/// Sends stdin until its end, then says so; each read waits for the
/// last to be taken, so input of any size flows at the guest's pace.
pub async fn pump_stdin(sender: StreamSender) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sender.stdin(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = sender.stdin_eof().await;
}

/// SIGINT and SIGTERM to banger go to the command (with a raw terminal,
/// Ctrl-C is a key instead, so these come only from `kill`).
async fn forward_signals(sender: StreamSender) {
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return;
    };
    loop {
        let number = tokio::select! {
            Some(()) = interrupt.recv() => libc::SIGINT,
            Some(()) = terminate.recv() => libc::SIGTERM,
            else => return,
        };
        if sender.signal(number).await.is_err() {
            return;
        }
    }
}

/// Sends the terminal's new size on every SIGWINCH.
pub async fn forward_resizes(sender: StreamSender) {
    let Ok(mut winch) = signal(SignalKind::window_change()) else { return };
    let mut last: Option<TermSize> = terminal::size();
    while winch.recv().await.is_some() {
        let size = terminal::size();
        if let Some(size) = size.filter(|s| Some(*s) != last) {
            if sender.resize(size).await.is_err() {
                return;
            }
        }
        last = size;
    }
}
