//! Figures of a VM boot benchmark: per-round timings, medians, the ratio
//! banger / bare QEMU, banger's host-side work and the disk cost per VM.

use serde::Serialize;

use crate::bare::BareTiming;
use crate::diskcost::DiskCost;
use crate::report::median;

/// banger's side of one round, in seconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BangerTiming {
    /// `banger vm create` (returns once the agent answered).
    pub create_s: f64,
    /// The first `banger vm exec -- true`.
    pub exec_s: f64,
    /// Both.
    pub total_s: f64,
    /// Where the create's time went, from bangerd's log.
    pub steps: Option<CreateSteps>,
}

/// A create split at the lines bangerd logs, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CreateSteps {
    /// CLI start to "operation started".
    pub cli_to_operation_ms: f64,
    /// "operation started" to "starting QEMU": banger's own host-side work.
    pub host_side_ms: Option<f64>,
    /// Of that, writing the daemon's agent into the VM's disk.
    pub agent_install_ms: Option<f64>,
    /// "operation started" to "VMM started": the same plus QEMU's
    /// initialisation until its `-daemonize` parent exits (over-counts).
    pub to_vmm_started_ms: f64,
    /// "VMM started" to "VM running" (the agent answered).
    pub vmm_started_to_running_ms: Option<f64>,
    /// "VM running" to the CLI's exit.
    pub running_to_cli_exit_ms: Option<f64>,
}

/// Both sides of one round.
#[derive(Debug, Serialize)]
pub struct VmRound {
    pub round: usize,
    pub banger: BangerTiming,
    pub bare: BareTiming,
}

/// Medians over the rounds.
#[derive(Debug, Serialize)]
pub struct Medians {
    pub banger_create_s: f64,
    pub banger_exec_s: f64,
    pub banger_total_s: f64,
    pub bare_vmm_started_s: f64,
    pub bare_agent_hello_s: f64,
    pub bare_total_s: f64,
    /// The median of the rounds' banger_total_s / bare_total_s: above 1.0,
    /// banger adds that much.
    pub ratio: f64,
    /// The smallest and largest round's ratio.
    pub ratio_spread: (f64, f64),
    pub host_side_ms: Option<f64>,
    pub agent_install_ms: Option<f64>,
    pub to_vmm_started_ms: Option<f64>,
    pub cli_to_operation_ms: Option<f64>,
    pub vmm_started_to_running_ms: Option<f64>,
    pub running_to_cli_exit_ms: Option<f64>,
}

/// The whole benchmark.
#[derive(Debug, Serialize)]
pub struct VmReport {
    pub memory_mib: u32,
    pub rounds: Vec<VmRound>,
    pub medians: Medians,
    pub disk: Vec<DiskCost>,
    /// Why a disk measurement was left out.
    pub disk_skipped: Vec<String>,
}

impl VmReport {
    pub fn new(memory_mib: u32, rounds: Vec<VmRound>, disk: Vec<DiskCost>, disk_skipped: Vec<String>) -> VmReport {
        let of = |f: &dyn Fn(&VmRound) -> f64| median(rounds.iter().map(f).collect());
        let steps = |f: &dyn Fn(&CreateSteps) -> Option<f64>| {
            let values: Vec<f64> = rounds.iter().filter_map(|r| r.banger.steps.as_ref().and_then(f)).collect();
            (!values.is_empty()).then(|| median(values))
        };
        let banger_total_s = of(&|r| r.banger.total_s);
        // Rounds interleave the two sides, so each round's ratio compares like with like.
        let ratios: Vec<f64> = rounds.iter().map(|r| r.banger.total_s / r.bare.exited_s).collect();
        let bare_total_s = of(&|r| r.bare.exited_s);
        let medians = Medians {
            banger_create_s: of(&|r| r.banger.create_s),
            banger_exec_s: of(&|r| r.banger.exec_s),
            banger_total_s,
            bare_vmm_started_s: of(&|r| r.bare.vmm_started_s),
            bare_agent_hello_s: of(&|r| r.bare.agent_hello_s),
            bare_total_s,
            ratio: median(ratios.clone()),
            ratio_spread: (
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            ),
            host_side_ms: steps(&|s| s.host_side_ms),
            agent_install_ms: steps(&|s| s.agent_install_ms),
            to_vmm_started_ms: steps(&|s| Some(s.to_vmm_started_ms)),
            cli_to_operation_ms: steps(&|s| Some(s.cli_to_operation_ms)),
            vmm_started_to_running_ms: steps(&|s| s.vmm_started_to_running_ms),
            running_to_cli_exit_ms: steps(&|s| s.running_to_cli_exit_ms),
        };
        VmReport { memory_mib, rounds, medians, disk, disk_skipped }
    }

    pub fn print_table(&self) {
        println!("VM boot to first exec, {} MiB, QEMU with the arguments of banger's driver", self.memory_mib);
        println!();
        println!(
            "{:<7} {:>10} {:>9} {:>10}   {:>12} {:>10} {:>10}",
            "round", "create s", "exec s", "banger s", "bare vmm s", "hello s", "bare s"
        );
        for r in &self.rounds {
            let (b, q) = (&r.banger, &r.bare);
            println!(
                "{:<7} {:>10.3} {:>9.3} {:>10.3}   {:>12.3} {:>10.3} {:>10.3}",
                r.round, b.create_s, b.exec_s, b.total_s, q.vmm_started_s, q.agent_hello_s, q.exited_s
            );
        }
        let m = &self.medians;
        println!(
            "{:<7} {:>10.3} {:>9.3} {:>10.3}   {:>12.3} {:>10.3} {:>10.3}",
            "median",
            m.banger_create_s,
            m.banger_exec_s,
            m.banger_total_s,
            m.bare_vmm_started_s,
            m.bare_agent_hello_s,
            m.bare_total_s
        );
        println!();
        let pct = (m.ratio - 1.0) * 100.0;
        let verdict = if pct < 10.0 { "within the 10% target" } else { "over the 10% target" };
        println!(
            "ratio = banger (create + first exec) / bare (spawn to exit of `true`) = {:.3} (median of {} rounds; spread {:.3} to {:.3})",
            m.ratio,
            self.rounds.len(),
            m.ratio_spread.0,
            m.ratio_spread.1
        );
        println!("        banger adds {pct:+.1}% ({verdict})");
        println!();
        println!("where a create's time goes (from bangerd's log, medians, ms):");
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        println!("  CLI start -> operation started               {:>9}", ms(m.cli_to_operation_ms));
        println!("  operation started -> QEMU spawned (host work){:>9}", ms(m.host_side_ms));
        println!("    of which: the agent written into its disk   {:>9}", ms(m.agent_install_ms));
        println!("  operation started -> \"VMM started\"           {:>9}", ms(m.to_vmm_started_ms));
        println!("  \"VMM started\" -> agent answered              {:>9}", ms(m.vmm_started_to_running_ms));
        println!("  agent answered -> CLI exit                    {:>9}", ms(m.running_to_cli_exit_ms));
        println!(
            "  (\"VMM started\" is logged after QEMU's -daemonize parent exits, so it over-counts \
             the host work by QEMU's initialisation; bare QEMU took {:.1} ms for that)",
            m.bare_vmm_started_s * 1e3
        );
        println!();
        println!("disk per new VM (vm create --no-start, before the guest writes; MiB = 2^20 bytes):");
        println!(
            "  {:<9} {:<10} {:<12} {:>10} {:>12} {:>12} {:>12}",
            "state", "fs", "strategy", "image MiB", "image alloc", "VM alloc", "free delta"
        );
        let mib = |b: f64| b / (1u64 << 20) as f64;
        for d in &self.disk {
            println!(
                "  {:<9} {:<10} {:<12} {:>10.1} {:>12.2} {:>12.2} {:>12.2}",
                d.setting,
                d.filesystem,
                d.strategy,
                mib(d.image_bytes as f64),
                mib(d.image_allocated_bytes as f64),
                mib(d.vm_allocated_bytes as f64),
                mib(d.free_delta_bytes as f64)
            );
        }
        println!("  (st_blocks counts a reflink's shared extents as allocated; the free delta shows what it costs)");
        for why in &self.disk_skipped {
            println!("  skipped: {why}");
        }
    }
}
