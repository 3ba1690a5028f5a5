//! `banger-bench`: measures banger against the plain shell tools doing the
//! same work and reports the ratio. A benchmark, not a test: it exits 0
//! whatever the figures, and non-zero only when a run fails outright.

mod bare;
mod bootlog;
mod corpus;
mod daemon;
mod diskcost;
mod exec;
mod pull;
mod report;
mod serve;
mod stack;
mod tools;
mod vm;
mod vm_report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks banger against the shell pipeline doing the same work.
///
/// `banger-bench pull` times `banger kernel pull` of a generated bundle
/// served on loopback against `curl | tee >(sha256sum) | zstd -d | tar -x`
/// and prints the ratio of the medians (below 1.0: banger is faster).
///
/// `banger-bench vm` times `banger vm create` + a first `vm exec` against
/// QEMU started by hand with banger's arguments until its agent runs `true`,
/// and measures banger's host-side work and the disk a new VM costs.
///
/// `banger-bench exec` times `banger vm exec -- true` and a large stream out
/// of the guest against ssh into the same debian guest.
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
    /// VM boot to first exec: `banger vm create` + `vm exec` against bare QEMU.
    Vm(vm::VmArgs),
    /// Exec latency and throughput: `banger vm exec` against ssh into the same guest.
    Exec(exec::ExecArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pull(args) => pull::run(&args),
        Command::Vm(args) => vm::run(&args),
        Command::Exec(args) => exec::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
