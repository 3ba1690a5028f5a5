//! `banger-bench`: measures banger against the plain shell tools doing the
//! same work and reports the ratio. A benchmark, not a test: it exits 0
//! whatever the figures, and non-zero only when a run fails outright.

mod corpus;
mod daemon;
mod pull;
mod report;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks banger against the shell pipeline doing the same work.
///
/// `banger-bench pull` times `banger kernel pull` of a generated bundle
/// served on loopback against `curl | tee >(sha256sum) | zstd -d | tar -x`
/// and prints the ratio of the medians (below 1.0: banger is faster).
/// Build first: cargo build --release -p bangerd -p banger -p banger-bench
#[derive(Debug, Parser)]
#[command(name = "banger-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Kernel pull throughput: `banger kernel pull` against curl | zstd -d | tar -x.
    Pull(pull::PullArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pull(args) => pull::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
