//! `banger-bench pull`: `banger kernel pull` against the shell pipeline
//! doing the same work (download, sha256, zstd -d, tar -x), both reading
//! one in-memory bundle over loopback and writing to one filesystem.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::corpus;
use crate::daemon::{self, DaemonCommand, DaemonProcess};
use crate::report::{PullReport, Round, Timing};
use crate::serve::BundleServer;
use crate::tools::{on_path, settle};

/// Round `n` pulls catalog entry `bench-n`, so no round deletes a tree just
/// before another is written (see `corpus::make`).
const KERNEL_PREFIX: &str = "bench-";
const BUNDLE_PATH: &str = "/bench.tar.zst";
/// What the pipeline side runs; `$!` is the sha256sum of the process
/// substitution, waited for so the digest is part of the work timed.
const PIPELINE: &str = r#"set -o pipefail
curl -sS --fail "$1" | tee >(sha256sum > "$2") | zstd -d -q | tar -x -C "$3"
wait $!"#;
const TOOLS: &[&str] = &["bash", "curl", "tee", "sha256sum", "zstd", "tar", "sync"];

/// Times `banger kernel pull` against curl | tee >(sha256sum) | zstd -d | tar -x.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Decompressed size of the generated bundle, in MB (10^6 bytes).
    #[arg(long, default_value_t = 300)]
    size_mb: u64,
    /// Rounds; each times banger, then the pipeline. Each round leaves its
    /// two unpacked copies until the end, so the work directory needs
    /// about 2 x rounds x size free.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// zstd level for the bundle (`banger kernel bundle` uses 3).
    #[arg(long, default_value_t = 3)]
    level: i32,
    /// Where bangerd and banger are [default: next to this executable].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Parent of the temporary work directory; both sides write there.
    #[arg(long, value_name = "DIR")]
    work_parent: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// Paths inside the temporary work directory.
struct Layout {
    state: PathBuf,
    socket: PathBuf,
    no_config: PathBuf,
    catalog: PathBuf,
    log: PathBuf,
    root: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Layout {
        Layout {
            state: root.join("state"),
            socket: root.join("bangerd.sock"),
            no_config: root.join("no-config.toml"),
            catalog: root.join("catalog.json"),
            log: root.join("bangerd.log"),
            root: root.to_owned(),
        }
    }
}

pub fn run(args: &PullArgs) -> anyhow::Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.size_mb > 0, "--size-mb must be at least 1");
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .parent()
            .context("this executable has no directory")?
            .to_owned(),
    };
    let (bangerd, banger) = (bin_dir.join("bangerd"), bin_dir.join("banger"));
    for bin in [&bangerd, &banger] {
        ensure!(
            bin.is_file(),
            "{} not found; build with: cargo build --release -p bangerd -p banger -p banger-bench",
            bin.display()
        );
    }
    for tool in TOOLS {
        ensure!(on_path(tool), "`{tool}` is not on PATH; the pipeline side needs it");
    }

    let mut builder = tempfile::Builder::new();
    builder.prefix("banger-bench-");
    let work = match &args.work_parent {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .context("cannot create the work directory")?;
    let layout = Layout::new(work.path());

    eprintln!("generating a {} MB bundle (zstd -{})...", args.size_mb, args.level);
    let bundle = corpus::make(&layout.root.join("src"), args.size_mb * 1_000_000, args.level)?;
    let (compressed, unpacked, files) = (bundle.bytes.len() as u64, bundle.unpacked_bytes, bundle.files);
    let server = BundleServer::start(BUNDLE_PATH, Arc::new(bundle.bytes))?;
    write_catalog(&layout.catalog, args.rounds, &server.url(), &bundle.sha256, compressed)?;

    fs::create_dir(&layout.state).context("cannot create the state directory")?;
    let daemon = DaemonProcess::start(&DaemonCommand {
        bangerd,
        socket: layout.socket.clone(),
        state_dir: layout.state.clone(),
        config: layout.no_config.clone(),
        log: layout.log.clone(),
        args: vec!["--catalog".into(), layout.catalog.clone().into()],
        env: Vec::new(),
    })?;

    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}...", args.rounds);
        let banger_secs = time_banger(&banger, &layout, &format!("{KERNEL_PREFIX}{round}"))
            .with_context(|| format!("bangerd log:\n{}", daemon.log_tail()))?;
        let pipeline_secs = time_pipeline(&layout, round, &server.url(), &bundle.sha256)?;
        rounds.push(Round {
            round,
            banger: Timing::new(banger_secs, compressed, unpacked),
            pipeline: Timing::new(pipeline_secs, compressed, unpacked),
        });
    }
    drop(daemon);

    let report = PullReport::new(compressed, unpacked, files, rounds);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
    }
    work.close().context("cannot remove the work directory")?;
    Ok(())
}

fn write_catalog(path: &Path, rounds: usize, url: &str, sha256: &str, size: u64) -> anyhow::Result<()> {
    let entries: Vec<_> = (1..=rounds)
        .map(|round| {
            serde_json::json!({
                "name": format!("{KERNEL_PREFIX}{round}"),
                "distro": "bench",
                "arch": std::env::consts::ARCH,
                "kernel_version": "6.1.0-bench",
                "tarball_url": url,
                "tarball_sha256": sha256,
                "size_bytes": size,
                "description": "generated by banger-bench pull",
            })
        })
        .collect();
    let catalog = serde_json::json!({ "version": 1, "entries": entries });
    fs::write(path, serde_json::to_vec_pretty(&catalog)?).with_context(|| format!("cannot write {}", path.display()))
}

/// One `banger kernel pull` of catalog entry `name` into the store.
fn time_banger(banger: &Path, layout: &Layout, name: &str) -> anyhow::Result<f64> {
    let mut command = Command::new(banger);
    command.arg("--socket").arg(&layout.socket).args(["kernel", "pull", name, "--force", "--json"]);
    command.stdin(Stdio::null());
    daemon::isolate(&mut command, &layout.no_config);
    settle()?;
    let started = Instant::now();
    let output = command.output().context("cannot run banger")?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("banger kernel pull failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let vmlinux = layout.state.join("kernels").join(name).join("vmlinux");
    ensure!(banger_kernel::bundle::is_elf(&vmlinux), "banger reported success but {} is not there", vmlinux.display());
    Ok(seconds)
}

/// One run of the shell pipeline into a fresh directory.
fn time_pipeline(layout: &Layout, round: usize, url: &str, sha256: &str) -> anyhow::Result<f64> {
    let dest = layout.root.join(format!("pipeline-{round}"));
    let sum_file = layout.root.join(format!("pipeline-{round}.sha256"));
    fs::create_dir(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    settle()?;
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(PIPELINE)
        .arg("bash")
        .arg(url)
        .arg(&sum_file)
        .arg(&dest)
        .stdin(Stdio::null())
        .status()
        .context("cannot run bash")?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(status.success(), "the pipeline failed ({status})");
    let sum = read_digest(&sum_file)?;
    ensure!(sum == sha256, "the pipeline's sha256 is {sum}, the bundle's is {sha256}");
    ensure!(banger_kernel::bundle::is_elf(&dest.join("vmlinux")), "the pipeline left no vmlinux");
    Ok(seconds)
}

/// The digest sha256sum wrote; `wait $!` should have made it whole, but
/// older shells do not wait for process substitutions, so allow a moment.
fn read_digest(path: &Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if let Some(sum) = text.split_whitespace().next().filter(|s| s.len() == 64) {
            return Ok(sum.to_owned());
        }
        ensure!(Instant::now() < deadline, "sha256sum wrote no digest to {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}
