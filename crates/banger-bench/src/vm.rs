//! `banger-bench vm`: the time from `banger vm create` to a first
//! successful exec, against QEMU started by hand with the same arguments,
//! kernel and rootfs until its agent runs `true`; banger's host-side work
//! per create, from bangerd's log; and the disk a new VM costs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};

use crate::bare::BareGuest;
use crate::bootlog::{self, seconds_between};
use crate::diskcost::{self, DiskCost, LoopXfs};
use crate::stack::{Inputs, Stack, Timed, IMAGE};
use crate::vm_report::{BangerTiming, CreateSteps, VmReport, VmRound};

const QEMU: &str = "qemu-system-x86_64";
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// banger's default vCPUs, given to the bare side too.
const CPUS: u32 = 1;

/// Times VM create + first exec against bare QEMU booting the same guest.
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Rounds; each boots one VM with banger, then one with bare QEMU.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Guest memory in MiB, for both sides.
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// Where bangerd and banger are [default: next to this executable].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// The static guest agent [default: build it with cargo, as scripts/build-agent does].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Debian's cloud kernel package [default: `apt-get download` it].
    #[arg(long, value_name = "FILE.deb")]
    deb: Option<PathBuf>,
    /// Parent of the temporary work directory (state roots, VM disks).
    #[arg(long, value_name = "DIR")]
    work_parent: Option<PathBuf>,
    /// How often the bare side resends its hello until answered, in ms
    /// (bangerd resends every 250, so the bare side gets the same interval).
    #[arg(long, default_value_t = 250)]
    hello_retry_ms: u64,
    /// Skip the disk measurement on a loop-mounted XFS.
    #[arg(long)]
    no_xfs: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &VmArgs) -> anyhow::Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
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
    let qemu = which(QEMU).context("qemu-system-x86_64 is not on PATH (apt-get install qemu-system-x86)")?;

    let mut builder = tempfile::Builder::new();
    builder.prefix("banger-bench-");
    let work = match &args.work_parent {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .context("cannot create the work directory")?;
    let agent = match &args.agent {
        Some(path) => path.clone(),
        None => build_agent()?,
    };
    let deb = match &args.deb {
        Some(path) => path.clone(),
        None => download_kernel(work.path())?,
    };
    let absolute = |p: PathBuf| p.canonicalize().with_context(|| format!("cannot find {}", p.display()));
    let inputs = Inputs { bangerd, banger, agent: absolute(agent)?, deb: absolute(deb)? };

    eprintln!("starting bangerd under {}...", work.path().display());
    let default_dir = work.path().join("default");
    let stack = Stack::start(&inputs, &default_dir, &default_dir.join("state"))?;
    let kernel = stack.kernel()?;
    let image = stack.image()?;
    let guest = BareGuest {
        qemu,
        vmlinux: kernel.vmlinux_path.into(),
        initrd: kernel.initrd_path.map(Into::into),
        rootfs: image.rootfs_path.into(),
        init: image.init,
        memory_mib: args.memory_mib,
        cpus: CPUS,
        hello_retry: std::time::Duration::from_millis(args.hello_retry_ms),
    };

    let mut timed = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}: banger...", args.rounds);
        let banger = banger_round(&stack, &format!("bench-{round}"), args.memory_mib)?;
        eprintln!("round {round}/{}: bare QEMU...", args.rounds);
        let bare = guest.boot(&work.path().join("bare").join(round.to_string()))?;
        timed.push((round, banger, bare));
    }
    let log = std::fs::read_to_string(&stack.log).context("cannot read bangerd's log")?;
    let rounds = timed
        .into_iter()
        .map(|(round, (create, exec), bare)| {
            let steps = bootlog::create_timeline(&log, &format!("bench-{round}")).map(|t| steps(&t, &create));
            let banger = BangerTiming {
                create_s: create.seconds,
                exec_s: exec.seconds,
                total_s: create.seconds + exec.seconds,
                steps,
            };
            VmRound { round, banger, bare }
        })
        .collect();

    eprintln!("disk cost on the default state root...");
    let mut disk = vec![diskcost::measure(&stack, "default", "disk-default")?];
    drop(stack);
    let mut skipped = Vec::new();
    match diskcost::xfs_possible() {
        _ if args.no_xfs => skipped.push("XFS state root: --no-xfs".to_owned()),
        Err(why) => skipped.push(format!("XFS state root: {why}")),
        Ok(()) => {
            eprintln!("disk cost on a loop-mounted XFS state root...");
            disk.push(measure_on_xfs(&inputs, work.path())?);
        }
    }

    let report = VmReport::new(args.memory_mib, rounds, disk, skipped);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
    }
    work.close().context("cannot remove the work directory")?;
    Ok(())
}

/// Creates VM `name`, runs `true` in it, removes it: the create's and the
/// exec's timings.
fn banger_round(stack: &Stack, name: &str, memory_mib: u32) -> anyhow::Result<(Timed, Timed)> {
    crate::tools::settle()?;
    let memory = format!("{memory_mib}M");
    let create = stack.timed(&["vm", "create", name, "--image", IMAGE, "--memory", &memory])?;
    let exec = stack.timed(&["vm", "exec", name, "--", "true"])?;
    let vm = stack.vm(name)?;
    ensure!(!vm.kvm, "banger booted {name} with KVM, the bare side uses TCG: the figures would not compare");
    stack.run(&["vm", "rm", name, "--force"])?;
    Ok((create, exec))
}

fn steps(t: &bootlog::CreateTimeline, create: &Timed) -> CreateSteps {
    let ms = |from, to| seconds_between(from, to) * 1e3;
    CreateSteps {
        cli_to_operation_ms: ms(create.started_at, t.op_started),
        host_side_ms: t.vmm_spawn.map(|at| ms(t.op_started, at)),
        agent_install_ms: t.agent_install_ms.map(|ms| ms as f64),
        to_vmm_started_ms: ms(t.op_started, t.vmm_started),
        vmm_started_to_running_ms: t.vm_running.map(|at| ms(t.vmm_started, at)),
        running_to_cli_exit_ms: t.vm_running.map(|at| ms(at, create.ended_at)),
    }
}

/// The disk measurement with the state root on a fresh loop-mounted XFS;
/// the daemon is stopped before the filesystem is unmounted.
fn measure_on_xfs(inputs: &Inputs, work: &Path) -> anyhow::Result<DiskCost> {
    let xfs = LoopXfs::mount(work)?;
    let stack = Stack::start(inputs, &work.join("xfs-daemon"), &xfs.path().join("state"))?;
    let cost = diskcost::measure(&stack, "xfs loop", "disk-xfs");
    drop(stack);
    drop(xfs);
    cost
}

/// Builds the static guest agent (as scripts/build-agent does) and returns its path.
fn build_agent() -> anyhow::Result<PathBuf> {
    eprintln!("building the static guest agent...");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "-p", "banger-agent", "--target", AGENT_TARGET])
        .args(["--message-format", "json-render-diagnostics"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(&workspace)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    ensure!(output.status.success(), "building the guest agent failed ({}); or pass --agent PATH", output.status);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "banger-agent")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo built no banger-agent executable")
}

/// `apt-get download`s the versioned package behind linux-image-cloud-amd64 into `dir`.
fn download_kernel(dir: &Path) -> anyhow::Result<PathBuf> {
    let out =
        Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]).output().context("cannot run apt-cache")?;
    ensure!(out.status.success(), "apt-cache depends {KERNEL_METAPACKAGE} failed; pass --deb FILE");
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .with_context(|| format!("no linux-image-*-cloud-amd64 in:\n{text}"))?
        .to_owned();
    let dest = dir.join("kernel-deb");
    std::fs::create_dir_all(&dest)?;
    eprintln!("downloading {package}...");
    let status = Command::new("apt-get")
        .arg("download")
        .arg(&package)
        .current_dir(&dest)
        .status()
        .context("cannot run apt-get")?;
    ensure!(status.success(), "apt-get download {package} failed; pass --deb FILE");
    std::fs::read_dir(&dest)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| p.is_file())
}
