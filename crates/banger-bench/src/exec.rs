//! `banger-bench exec`: `banger vm exec` against ssh into the same guest.
//!
//! banger boots the debian image as a VM; the bare side boots a copy of the
//! same rootfs, kernel and QEMU arguments by hand with a user-mode NIC whose
//! port 22 is forwarded to loopback, so OpenSSH reaches the guest's sshd the
//! way it would on any network. Both guests run side by side, and each
//! round times both sides in turn:
//!
//! - latency: `true` run `--runs` times per round by `banger vm exec`, by
//!   ssh over a ControlMaster connection (the persistent connection banger
//!   keeps to its agent, given to ssh too), and by a fresh ssh;
//! - throughput: `head -c BYTES /dev/zero` in the guest, read to the end on
//!   the host, by banger and by multiplexed ssh, with bangerd's resident
//!   memory sampled while banger streams.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use banger_vmm::qemu::Qemu;
use banger_vmm::{DiskSpec, VmSpec};
use serde::Serialize;

use crate::report::median;
use crate::stack::{Inputs, Stack, KERNEL};

const IMAGE: &str = "debian";
const VM: &str = "bench-exec";
const CPUS: u32 = 1;
/// Until the bare guest's sshd answers (debian under TCG generates its
/// host keys at boot).
const SSH_READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Times `banger vm exec` against ssh into the same guest.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Interleaved rounds.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Runs of `true` per side and round.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Bytes streamed per side and round.
    #[arg(long, default_value_t = 256 << 20)]
    bytes: u64,
    /// Bytes of one last banger stream, during which bangerd's memory is watched.
    #[arg(long, default_value_t = 1 << 30)]
    rss_bytes: u64,
    /// Guest memory in MiB, for both guests.
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    /// Where bangerd and banger are [default: next to this executable].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// The static guest agent.
    #[arg(long, value_name = "PATH")]
    agent: PathBuf,
    /// Debian's cloud kernel package.
    #[arg(long, value_name = "FILE.deb")]
    deb: PathBuf,
    /// Parent of the temporary work directory.
    #[arg(long, value_name = "DIR")]
    work_parent: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// Latencies of one way of running `true`, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub runs: usize,
}

/// One side's streams, in MB/s (10^6 bytes a second).
#[derive(Debug, Serialize)]
pub struct Throughput {
    pub median_mb_s: f64,
    pub min_mb_s: f64,
    pub max_mb_s: f64,
}

/// The whole benchmark.
#[derive(Debug, Serialize)]
pub struct ExecReport {
    pub rounds: usize,
    pub bytes: u64,
    pub banger: Latency,
    pub ssh_multiplexed: Latency,
    pub ssh_fresh: Latency,
    /// ssh (multiplexed) p50 / banger p50: how many times faster banger is.
    pub latency_ratio_multiplexed: f64,
    /// ssh (fresh) p50 / banger p50.
    pub latency_ratio_fresh: f64,
    pub banger_stream: Throughput,
    pub ssh_stream: Throughput,
    /// banger / ssh median throughput.
    pub throughput_ratio: f64,
    /// Bytes of the stream during which bangerd's memory was watched too.
    pub rss_bytes: u64,
    /// bangerd's largest resident set while streaming, in MiB, and before.
    pub daemon_rss_peak_mib: f64,
    pub daemon_rss_idle_mib: f64,
}

pub fn run(args: &ExecArgs) -> anyhow::Result<()> {
    ensure!(args.rounds > 0 && args.runs > 0, "--rounds and --runs must be at least 1");
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("this executable has no directory")?.to_owned(),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix("banger-bench-exec-");
    let work = match &args.work_parent {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .context("cannot create the work directory")?;
    let absolute = |p: &Path| p.canonicalize().with_context(|| format!("cannot find {}", p.display()));
    let inputs = Inputs {
        bangerd: bin_dir.join("bangerd"),
        banger: bin_dir.join("banger"),
        agent: absolute(&args.agent)?,
        deb: absolute(&args.deb)?,
    };
    let dir = work.path().join("banger");
    let stack = Stack::start(&inputs, &dir, &dir.join("state"))?;
    eprintln!("building the debian image (debootstrap; minutes)...");
    stack.run(&["image", "build", IMAGE, "--recipe", "debian", "--kernel-ref", KERNEL, "--force"])?;
    let memory = format!("{}M", args.memory_mib);
    eprintln!("creating {VM}...");
    stack.run(&["vm", "create", VM, "--image", IMAGE, "--memory", &memory])?;

    eprintln!("booting the bare guest with sshd...");
    let bare = SshGuest::boot(&stack, &work.path().join("bare"), args.memory_mib)?;
    let banger_exec = |argv: &[&str]| {
        let mut all = vec!["vm", "exec", VM, "--"];
        all.extend_from_slice(argv);
        stack.command(&all)
    };

    let (mut banger, mut muxed, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    let (mut banger_mb_s, mut ssh_mb_s) = (Vec::new(), Vec::new());
    let daemon_pid = stack.daemon_pid();
    let idle_rss = rss_kib(daemon_pid)?;
    let mut peak_rss = idle_rss;
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}...", args.rounds);
        for _ in 0..args.runs {
            banger.push(time_ok(banger_exec(&["true"]))?);
            muxed.push(time_ok(bare.ssh(true, &["true"]))?);
            fresh.push(time_ok(bare.ssh(false, &["true"]))?);
        }
        let count = args.bytes.to_string();
        let stream = ["head", "-c", count.as_str(), "/dev/zero"];
        let (seconds, peak) = time_stream(banger_exec(&stream), args.bytes, Some(daemon_pid))?;
        peak_rss = peak_rss.max(peak);
        banger_mb_s.push(args.bytes as f64 / seconds / 1e6);
        let (seconds, _) = time_stream(bare.ssh(true, &stream), args.bytes, None)?;
        ssh_mb_s.push(args.bytes as f64 / seconds / 1e6);
    }
    eprintln!("streaming {} MB through banger, watching bangerd's memory...", args.rss_bytes / 1_000_000);
    let count = args.rss_bytes.to_string();
    let (_, peak) =
        time_stream(banger_exec(&["head", "-c", count.as_str(), "/dev/zero"]), args.rss_bytes, Some(daemon_pid))?;
    peak_rss = peak_rss.max(peak);
    stack.run(&["vm", "rm", VM, "--force"])?;
    drop(bare);

    let latency =
        |runs: Vec<f64>| Latency { p50_ms: percentile(&runs, 0.50), p99_ms: percentile(&runs, 0.99), runs: runs.len() };
    let throughput = |v: Vec<f64>| Throughput {
        min_mb_s: v.iter().copied().fold(f64::INFINITY, f64::min),
        max_mb_s: v.iter().copied().fold(0.0, f64::max),
        median_mb_s: median(v),
    };
    let (banger, ssh_multiplexed, ssh_fresh) = (latency(banger), latency(muxed), latency(fresh));
    let (banger_stream, ssh_stream) = (throughput(banger_mb_s), throughput(ssh_mb_s));
    let report = ExecReport {
        rounds: args.rounds,
        bytes: args.bytes,
        rss_bytes: args.rss_bytes,
        latency_ratio_multiplexed: ssh_multiplexed.p50_ms / banger.p50_ms,
        latency_ratio_fresh: ssh_fresh.p50_ms / banger.p50_ms,
        throughput_ratio: banger_stream.median_mb_s / ssh_stream.median_mb_s,
        banger,
        ssh_multiplexed,
        ssh_fresh,
        banger_stream,
        ssh_stream,
        daemon_rss_peak_mib: peak_rss as f64 / 1024.0,
        daemon_rss_idle_mib: idle_rss as f64 / 1024.0,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    drop(stack);
    work.close().context("cannot remove the work directory")?;
    Ok(())
}

fn print_table(r: &ExecReport) {
    println!("`true` in the guest, {} runs per side (ms):", r.banger.runs);
    println!("  {:<22} {:>9} {:>9}", "", "p50", "p99");
    for (name, l) in
        [("banger vm exec", &r.banger), ("ssh (ControlMaster)", &r.ssh_multiplexed), ("ssh (fresh)", &r.ssh_fresh)]
    {
        println!("  {:<22} {:>9.1} {:>9.1}", name, l.p50_ms, l.p99_ms);
    }
    println!(
        "  banger is {:.1}x faster than multiplexed ssh, {:.1}x faster than a fresh ssh (target: 5x)",
        r.latency_ratio_multiplexed, r.latency_ratio_fresh
    );
    println!();
    println!(
        "streaming {} MB out of the guest (MB/s, median [min, max] over {} rounds):",
        r.bytes / 1_000_000,
        r.rounds
    );
    for (name, t) in [("banger vm exec", &r.banger_stream), ("ssh (ControlMaster)", &r.ssh_stream)] {
        println!("  {:<22} {:>8.1} [{:.1}, {:.1}]", name, t.median_mb_s, t.min_mb_s, t.max_mb_s);
    }
    println!("  banger / ssh = {:.2} (target: at least 1)", r.throughput_ratio);
    println!();
    println!(
        "bangerd resident memory: {:.1} MiB idle, {:.1} MiB at most while streaming",
        r.daemon_rss_idle_mib, r.daemon_rss_peak_mib
    );
}

/// The `q` quantile of `values` (nearest rank).
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `command` (which must succeed) and times it, in milliseconds.
fn time_ok(mut command: Command) -> anyhow::Result<f64> {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let output = command.output().context("cannot run the command")?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(ms)
}

/// Runs `command`, reads its stdout to the end (which must be `bytes`
/// long) and times it; with a pid, samples that process's resident memory
/// meanwhile and returns the largest (KiB).
fn time_stream(mut command: Command, bytes: u64, watch: Option<u32>) -> anyhow::Result<(f64, u64)> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = command.spawn().context("cannot run the command")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let sampler = watch.map(|pid| {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        (done, thread)
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match stdout.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = match sampler {
        Some((done, thread)) => {
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            thread.join().unwrap_or(0)
        }
        None => 0,
    };
    ensure!(status.success(), "{command:?} failed ({status})");
    ensure!(total == bytes, "{command:?} gave {total} bytes, not {bytes}");
    Ok((seconds, peak))
}

/// A process's resident set, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The bare guest: the debian image's rootfs booted by hand, with sshd
/// reachable on a loopback port.
struct SshGuest {
    qemu: Child,
    port: u16,
    key: PathBuf,
    control: PathBuf,
    run_dir: PathBuf,
}

impl SshGuest {
    fn boot(stack: &Stack, run_dir: &Path, memory_mib: u32) -> anyhow::Result<SshGuest> {
        std::fs::create_dir_all(run_dir)?;
        let kernel = stack.kernel()?;
        let image: banger_api::Image = stack.json(&["image", "show", IMAGE])?;
        let root = run_dir.join("root.ext4");
        std::fs::copy(&image.rootfs_path, &root).context("cannot copy the debian rootfs")?;
        let key = run_dir.join("id_ed25519");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .context("cannot run ssh-keygen (apt-get install openssh-client)")?;
        ensure!(status.success(), "ssh-keygen failed");
        prepare_rootfs(&root, &key.with_extension("pub"), run_dir)?;

        let spec = VmSpec {
            name: "bare".into(),
            run_dir: run_dir.to_owned(),
            kernel: kernel.vmlinux_path.into(),
            initrd: kernel.initrd_path.map(Into::into),
            cmdline: format!("root=/dev/vda rw init={} banger.hostname=bare panic=-1 quiet", image.init),
            cpus: CPUS,
            memory_mib,
            disks: vec![DiskSpec { path: root, read_only: false }],
            nics: Vec::new(),
        };
        let qemu_bin = PathBuf::from("qemu-system-x86_64");
        let mut args = Qemu { binary: qemu_bin.clone(), kvm: false, vsock_cid: None }.args(&spec);
        // Not daemonised: this process owns it, and kills it when done.
        args.retain(|a| a != "-daemonize");
        let port = free_port()?;
        args.extend([
            "-netdev".into(),
            format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"),
            "-device".into(),
            "virtio-net-pci,netdev=net0".into(),
        ]);
        let log = std::fs::File::create(run_dir.join("qemu.log"))?;
        let qemu = Command::new(&qemu_bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot run qemu-system-x86_64")?;
        let guest = SshGuest { qemu, port, key, control: run_dir.join("ssh-control"), run_dir: run_dir.to_owned() };
        let deadline = Instant::now() + SSH_READY_TIMEOUT;
        loop {
            let mut probe = guest.ssh(false, &["true"]);
            probe.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            if probe.status().is_ok_and(|s| s.success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the bare guest's sshd did not answer within {SSH_READY_TIMEOUT:?}; see {}",
                    run_dir.join("qemu.log").display()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        Ok(guest)
    }

    /// `ssh root@guest ARGV`, over the ControlMaster connection or a fresh one.
    fn ssh(&self, multiplexed: bool, argv: &[&str]) -> Command {
        let mut command = Command::new("ssh");
        command
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]);
        if multiplexed {
            command
                .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=600"])
                .arg("-o")
                .arg(format!("ControlPath={}", self.control.display()));
        }
        command.arg("root@127.0.0.1").args(argv);
        command
    }
}

impl Drop for SshGuest {
    fn drop(&mut self) {
        let _ = Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()))
            .args(["-O", "exit", "root@127.0.0.1"])
            .stderr(Stdio::null())
            .status();
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Puts the bench's public key in root's authorized_keys and a unit that
/// gives the NIC QEMU's user-mode address (the image has no udev, which
/// systemd-networkd waits for), with debugfs (no mount).
fn prepare_rootfs(root: &Path, public_key: &Path, scratch: &Path) -> anyhow::Result<()> {
    let unit = scratch.join("bench-net.service");
    std::fs::write(
        &unit,
        "[Unit]\nDescription=The benchmark's user-mode NIC\nBefore=ssh.service\n\n[Service]\nType=oneshot\n\
         ExecStart=/sbin/ip link set eth0 up\nExecStart=/sbin/ip addr add 10.0.2.15/24 dev eth0\n\
         ExecStart=/sbin/ip route add default via 10.0.2.2\n\n[Install]\nWantedBy=multi-user.target\n",
    )?;
    let script = format!(
        "mkdir /root/.ssh\nsif /root/.ssh mode 040700\nrm /root/.ssh/authorized_keys\nwrite {key} /root/.ssh/authorized_keys\n\
         sif /root/.ssh/authorized_keys mode 0100600\nwrite {unit} /etc/systemd/system/bench-net.service\n\
         symlink /etc/systemd/system/multi-user.target.wants/bench-net.service /etc/systemd/system/bench-net.service\n",
        key = public_key.display(),
        unit = unit.display(),
    );
    let commands = scratch.join("debugfs.cmds");
    std::fs::write(&commands, script)?;
    let output =
        Command::new("debugfs").arg("-w").arg("-f").arg(&commands).arg(root).output().context("cannot run debugfs")?;
    ensure!(output.status.success(), "debugfs failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
