//! `bangerd`: reads flags, environment and the config file, then runs the
//! daemon until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use bangerd::config::{self, Config};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

/// The banger daemon. Flags override environment variables, which override
/// the config file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// API socket path.
    #[arg(long, env = "BANGER_SOCKET")]
    socket: Option<PathBuf>,
    /// State root (database, kernels, images, VMs).
    #[arg(long, env = "BANGER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Config file [default: /etc/banger/config.toml, if it exists].
    #[arg(long, env = "BANGER_CONFIG")]
    config: Option<PathBuf>,
    /// An extra kernel catalog, a URL or a path; repeatable.
    #[arg(long = "catalog", value_name = "URL|PATH")]
    catalogs: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // Before the config, whose default connection cap is sized from it.
    bangerd::server::limits::raise_open_files_limit();
    let mut config = Config::new(banger_api::DEFAULT_STATE_DIR, banger_api::DEFAULT_SOCKET);
    match &args.config {
        // A file named on purpose must exist; the default one may not.
        Some(path) if !path.exists() => anyhow::bail!("config file {} does not exist", path.display()),
        Some(path) => config.apply_file(config::read_file(path)?)?,
        None => config.apply_file(config::read_file(std::path::Path::new(banger_api::DEFAULT_CONFIG))?)?,
    }
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    if let Some(state_dir) = args.state_dir {
        config.state_dir = state_dir;
    }
    config.catalogs.extend(args.catalogs);

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        bangerd::run(config, shutdown).await
    })
}
