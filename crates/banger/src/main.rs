//! `banger`: the command-line client. It parses the command line, asks the
//! daemon, and prints tables for people or JSON for programs. It never
//! touches state itself.

mod commands;
mod copy;
mod output;
mod progress;
mod size;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use banger_api::ErrorCode;
use banger_client::{Client, ClientError};
use clap::{Parser, Subcommand};

/// Throwaway Linux microVMs on your own machine.
#[derive(Debug, Parser)]
#[command(name = "banger", version, about, propagate_version = true)]
pub struct Cli {
    /// bangerd's API socket [default: from BANGER_SOCKET, /etc/banger/config.toml, or /run/banger/bangerd.sock].
    #[arg(long, global = true, env = "BANGER_SOCKET")]
    socket: Option<PathBuf>,
    /// Print JSON instead of tables and progress bars.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Kernels: list, pull from a catalog, import, bundle, remove.
    #[command(subcommand)]
    Kernel(commands::kernel::KernelCommand),
    /// Root filesystem images: build, register, list, remove.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Virtual machines: create, run commands in, stop, remove.
    #[command(subcommand)]
    Vm(commands::vm::VmCommand),
    /// Guest sessions: commands under a terminal that outlive their clients.
    #[command(subcommand)]
    Session(commands::session::SessionCommand),
    /// SSH to NAME.vm through banger, with no prompt: banger's ssh config.
    #[command(subcommand, name = "ssh-config")]
    SshConfig(commands::ssh::SshConfigCommand),
    /// Check what this host can run and how to fix what it cannot.
    Doctor,
    /// Long-running work the daemon is doing or has done.
    #[command(subcommand, alias = "op")]
    Operation(commands::operation::OperationCommand),
    /// The daemon itself.
    #[command(subcommand)]
    Daemon(commands::daemon::DaemonCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// What every command gets: the client and the output mode.
pub struct Context {
    client: Client,
    json: bool,
}

/// Exit codes a script can rely on.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const CONFLICT: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
}

fn main() -> ExitCode {
    restore_sigpipe();
    quiet_panics();
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        commands::completions::print(shell);
        return ExitCode::SUCCESS;
    }
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let ctx = Context { client: Client::new(socket), json: cli.json };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(run(cli.command, &ctx));
    // A read of stdin still pending (exec, attach) cannot be cancelled:
    // exit without waiting for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(error) => report(&error),
    }
}

async fn run(command: Command, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        Command::Kernel(cmd) => commands::kernel::run(cmd, ctx).await,
        Command::Image(cmd) => commands::image::run(cmd, ctx).await,
        Command::Vm(cmd) => commands::vm::run(cmd, ctx).await,
        Command::Session(cmd) => commands::session::run(cmd, ctx).await,
        Command::SshConfig(cmd) => commands::ssh::run(cmd, ctx).await,
        Command::Doctor => commands::doctor::run(ctx).await,
        Command::Operation(cmd) => commands::operation::run(cmd, ctx).await,
        Command::Daemon(cmd) => commands::daemon::run(cmd, ctx).await,
        Command::Completions { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// What an unreachable daemon's error ends with.
const UNREACHABLE_HINT: &str = "is bangerd running? Start it with `sudo bangerd` or `sudo systemctl start bangerd`";

/// Prints an error as one line (it and its causes, joined with ": ") and
/// picks the exit code. Never a backtrace, whatever `RUST_BACKTRACE` or
/// `RUST_LIB_BACKTRACE` say: anyhow may capture one, but only its
/// `Debug` form prints it, and that is not used here.
fn report(error: &anyhow::Error) -> ExitCode {
    let client_error = error.chain().find_map(|e| e.downcast_ref::<ClientError>());
    let mut line = one_line(error);
    if matches!(client_error, Some(ClientError::Unreachable { .. })) {
        line.push_str("; ");
        line.push_str(UNREACHABLE_HINT);
    }
    eprintln!("error: {line}");
    let code = match client_error {
        Some(ClientError::Unreachable { .. }) => exit::UNREACHABLE,
        Some(ClientError::Api(api)) => match api.code {
            ErrorCode::InvalidArgument => exit::INVALID,
            ErrorCode::NotFound => exit::NOT_FOUND,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => exit::CONFLICT,
            _ => exit::FAILURE,
        },
        _ => exit::FAILURE,
    };
    ExitCode::from(code)
}

/// `error` and its causes joined with ": ", each on one line (a message from
/// the daemon may carry a tool's multi-line output). A cause whose text its
/// parent already ends with is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || parts.last().is_some_and(|prev| prev.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// A panic is a bug, but its report is still one line without a backtrace;
/// the exit code stays the usual 101.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        eprintln!("error: banger hit a bug{place}: {message}");
    }));
}

/// Lets `banger ... | head` end quietly, as other command-line tools do,
/// instead of panicking on a closed stdout (Rust ignores SIGPIPE by default).
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to the default at start-up,
    // before any thread exists, has no memory effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ends banger's standard output for whoever reads it (a connection's
/// end, passed on): `/dev/null` takes its place, so a late write is lost
/// rather than an error.
pub fn close_stdout() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// The socket from the config file, else the default.
fn default_socket() -> PathBuf {
    let config =
        std::env::var_os("BANGER_CONFIG").map(PathBuf::from).unwrap_or_else(|| banger_api::DEFAULT_CONFIG.into());
    std::fs::read_to_string(config)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| table.get("socket")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| banger_api::DEFAULT_SOCKET.into())
}
