//! A running VM's figures: the guest's counters sampled twice, a quarter
//! of a second apart, for its CPU and network rates, and its VMM process's
//! CPU time and resident memory read from the host's `/proc` at the same
//! moments. Also the guest's listening sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_agent_proto::features::STATS;
use banger_agent_proto::{self as proto, Reply, Request};
use banger_api::{GuestDisk, GuestMemory, GuestNet, GuestPort, GuestStats, VmStats, VmmStats};
use banger_vmm::VmmProcess;

use super::{agent, unexpected};
use crate::agent::AgentConn;
use crate::error::{Error, Result};
use crate::Daemon;

/// How far apart the two samples are.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// The VM's stats: two samples [`SAMPLE_INTERVAL`] apart.
pub async fn stats(daemon: &Arc<Daemon>, vm: &str) -> Result<VmStats> {
    let agent = agent(daemon, vm, "vm stats", STATS).await?;
    let vmm =
        daemon.running_vmm(vm)?.ok_or_else(|| Error::Conflict(format!("VM {vm:?} has no running VMM process")))?;
    let first = sample(&agent, vmm).await?;
    tokio::time::sleep(SAMPLE_INTERVAL).await;
    let second = sample(&agent, vmm).await?;
    Ok(figures(&first, &second, clock_ticks()))
}

/// The guest's listening sockets.
pub async fn ports(daemon: &Arc<Daemon>, vm: &str) -> Result<Vec<GuestPort>> {
    let agent = agent(daemon, vm, "vm ports", STATS).await?;
    match agent.request(&Request::Ports).await? {
        (Reply::Ports { ports }, _) => Ok(ports.into_iter().map(port).collect()),
        (reply, _) => Err(unexpected(&reply)),
    }
}

fn port(listener: proto::Listener) -> GuestPort {
    let proto::Listener { protocol, address, port, pid, process } = listener;
    GuestPort { protocol, address, port, pid, process }
}

/// One moment: the guest's counters and the VMM's, as close together as
/// the guest's answer allows.
struct Sample {
    at: Instant,
    guest: proto::GuestStats,
    vmm: HostProcess,
}

/// What `/proc` says of the VMM process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostProcess {
    pid: u32,
    /// User and system time, in clock ticks.
    cpu_ticks: u64,
    rss_bytes: u64,
}

async fn sample(agent: &AgentConn, vmm: VmmProcess) -> Result<Sample> {
    let guest = match agent.request(&Request::Stats).await? {
        (Reply::Stats(stats), _) => stats,
        (reply, _) => return Err(unexpected(&reply)),
    };
    let at = Instant::now();
    let vmm = read_process(vmm.pid)?;
    Ok(Sample { at, guest, vmm })
}

fn read_process(pid: u32) -> Result<HostProcess> {
    let read = |file: &str| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::read_to_string(&path).map_err(Error::io("cannot read", path))
    };
    let cpu_ticks =
        cpu_ticks(&read("stat")?).ok_or_else(|| Error::Internal(format!("/proc/{pid}/stat has no CPU times")))?;
    let rss_bytes = rss_bytes(&read("status")?).unwrap_or(0);
    Ok(HostProcess { pid, cpu_ticks, rss_bytes })
}

/// The host's clock ticks a second (`USER_HZ`).
fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// User plus system time from `/proc/PID/stat`, in clock ticks: fields 14
/// and 15, counted after the command name (which may hold spaces and
/// parentheses, so the last `)` ends it).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// `VmRSS` from `/proc/PID/status`, in bytes.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Busy share of all CPU time between two samples of the guest's
/// counters, in percent (0 when no time passed).
pub fn cpu_busy_percent(before: &proto::CpuTimes, after: &proto::CpuTimes) -> f64 {
    let total = after.total().saturating_sub(before.total());
    if total == 0 {
        return 0.0;
    }
    let busy = (after.user + after.system).saturating_sub(before.user + before.system);
    (busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
}

/// A process's CPU use between two readings of its ticks, in percent of
/// one CPU.
pub fn process_cpu_percent(ticks: u64, elapsed: Duration, ticks_per_second: u64) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 || ticks_per_second == 0 {
        return 0.0;
    }
    ticks as f64 * 100.0 / (ticks_per_second as f64 * seconds)
}

fn per_second(before: u64, after: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    after.saturating_sub(before) as f64 / seconds
}

/// The figures two samples make; the second's values are the current ones.
fn figures(first: &Sample, second: &Sample, ticks_per_second: u64) -> VmStats {
    let elapsed = second.at.saturating_duration_since(first.at);
    let (was, now) = (&first.guest, &second.guest);
    let net = now
        .net
        .iter()
        .map(|n| {
            let before = was.net.iter().find(|b| b.interface == n.interface);
            GuestNet {
                interface: n.interface.clone(),
                rx_bytes: n.rx_bytes,
                tx_bytes: n.tx_bytes,
                rx_bytes_per_sec: before.map_or(0.0, |b| per_second(b.rx_bytes, n.rx_bytes, elapsed)),
                tx_bytes_per_sec: before.map_or(0.0, |b| per_second(b.tx_bytes, n.tx_bytes, elapsed)),
            }
        })
        .collect();
    let disks = now
        .disks
        .iter()
        .map(|d| GuestDisk {
            mount: d.mount.clone(),
            device: d.device.clone(),
            total_bytes: d.total,
            used_bytes: d.used,
            available_bytes: d.available,
        })
        .collect();
    let memory = GuestMemory {
        total_bytes: now.memory.total,
        available_bytes: now.memory.available,
        used_bytes: now.memory.total.saturating_sub(now.memory.available),
    };
    let vmm_ticks = second.vmm.cpu_ticks.saturating_sub(first.vmm.cpu_ticks);
    VmStats {
        interval_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        guest: GuestStats {
            uptime_secs: now.uptime_secs,
            cpus: now.cpus,
            cpu_percent: cpu_busy_percent(&was.cpu, &now.cpu),
            load: now.load.to_vec(),
            memory,
            disks,
            net,
        },
        vmm: VmmStats {
            pid: second.vmm.pid,
            cpu_percent: process_cpu_percent(vmm_ticks, elapsed, ticks_per_second),
            rss_bytes: second.vmm.rss_bytes,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(user: u64, system: u64, idle: u64, steal: u64) -> proto::CpuTimes {
        proto::CpuTimes { user, system, idle, steal }
    }

    #[test]
    fn cpu_busy_is_the_busy_share_of_the_ticks_between_samples() {
        // 2 CPUs for 0.25 s at 100 Hz: 50 ticks, 30 of them busy.
        assert_eq!(cpu_busy_percent(&times(100, 50, 800, 0), &times(120, 60, 820, 0)), 60.0);
        assert_eq!(cpu_busy_percent(&times(0, 0, 0, 0), &times(25, 0, 0, 0)), 100.0);
        assert_eq!(cpu_busy_percent(&times(0, 0, 10, 0), &times(0, 0, 35, 0)), 0.0);
        // Stolen time counts against busy.
        assert_eq!(cpu_busy_percent(&times(0, 0, 0, 0), &times(10, 0, 0, 10)), 50.0);
        // No time passed, or counters that went back (an agent restarted).
        assert_eq!(cpu_busy_percent(&times(5, 5, 5, 0), &times(5, 5, 5, 0)), 0.0);
        assert_eq!(cpu_busy_percent(&times(50, 50, 50, 0), &times(1, 1, 1, 0)), 0.0);
    }

    #[test]
    fn a_process_cpu_share_is_of_one_cpu() {
        assert_eq!(process_cpu_percent(25, Duration::from_millis(250), 100), 100.0);
        assert_eq!(process_cpu_percent(50, Duration::from_millis(250), 100), 200.0);
        assert_eq!(process_cpu_percent(5, Duration::ZERO, 100), 0.0);
    }

    #[test]
    fn proc_files_are_read_past_odd_command_names() {
        let stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 700 42 0 0 20 0 3 0 12345 1 2";
        assert_eq!(cpu_ticks(stat), Some(742));
        assert_eq!(cpu_ticks("garbage"), None);
        let status = "Name:\tqemu\nVmHWM:\t  9000 kB\nVmRSS:\t  81234 kB\nThreads:\t3\n";
        assert_eq!(rss_bytes(status), Some(81234 * 1024));
        assert_eq!(rss_bytes("Name:\tkthread\n"), None);
    }

    #[test]
    fn rates_and_memory_come_from_the_two_samples() {
        let at = Instant::now();
        let guest = |rx: u64, user: u64, idle: u64| proto::GuestStats {
            cpus: 1,
            cpu: times(user, 0, idle, 0),
            memory: proto::MemoryStats { total: 1000, available: 400, free: 100 },
            net: vec![proto::NetStats { interface: "eth0".into(), rx_bytes: rx, tx_bytes: 0 }],
            ..Default::default()
        };
        let first = Sample { at, guest: guest(1000, 0, 100), vmm: HostProcess { pid: 9, cpu_ticks: 10, rss_bytes: 1 } };
        let second = Sample {
            at: at + Duration::from_millis(500),
            guest: guest(2000, 50, 150),
            vmm: HostProcess { pid: 9, cpu_ticks: 35, rss_bytes: 2 },
        };
        let stats = figures(&first, &second, 100);
        assert_eq!(stats.interval_ms, 500);
        assert_eq!(stats.guest.net[0].rx_bytes_per_sec, 2000.0);
        assert_eq!(stats.guest.cpu_percent, 50.0);
        assert_eq!(stats.guest.memory.used_bytes, 600);
        assert_eq!((stats.vmm.cpu_percent, stats.vmm.rss_bytes), (50.0, 2));
    }
}
