//! The guest's counters for `stats`: CPU time, uptime, load, memory, the
//! filesystems on block devices and the network interfaces, read from
//! `/proc` by pure parsers (tested on sample text) and `statvfs`.

use std::fs;

use banger_agent_proto::{CpuTimes, DiskStats, GuestStats, MemoryStats, NetStats};

/// Reads the counters now; what cannot be read is left at zero.
pub(crate) fn collect() -> GuestStats {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let (cpu, cpus) = parse_cpu(&read("/proc/stat"));
    GuestStats {
        uptime_secs: parse_uptime(&read("/proc/uptime")),
        cpus,
        cpu,
        load: parse_loadavg(&read("/proc/loadavg")),
        memory: parse_meminfo(&read("/proc/meminfo")),
        disks: block_mounts(&read("/proc/self/mounts")).into_iter().filter_map(disk_usage).collect(),
        net: parse_net_dev(&read("/proc/net/dev")),
    }
}

/// The `cpu` line of `/proc/stat` folded into four sums, and the number
/// of `cpuN` lines (the CPUs online).
fn parse_cpu(stat: &str) -> (CpuTimes, u32) {
    let mut times = CpuTimes::default();
    let mut cpus = 0;
    for line in stat.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("cpu") => {
                let v: Vec<u64> = words.map(|w| w.parse().unwrap_or(0)).collect();
                let at = |i: usize| v.get(i).copied().unwrap_or(0);
                // user nice system idle iowait irq softirq steal (guest time is inside user).
                times =
                    CpuTimes { user: at(0) + at(1), system: at(2) + at(5) + at(6), idle: at(3) + at(4), steal: at(7) };
            }
            Some(name)
                if name.strip_prefix("cpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
            {
                cpus += 1;
            }
            _ => {}
        }
    }
    (times, cpus)
}

fn parse_uptime(uptime: &str) -> f64 {
    uptime.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(0.0)
}

fn parse_loadavg(loadavg: &str) -> [f64; 3] {
    let mut load = [0.0; 3];
    for (slot, word) in load.iter_mut().zip(loadavg.split_whitespace()) {
        *slot = word.parse().unwrap_or(0.0);
    }
    load
}

fn parse_meminfo(meminfo: &str) -> MemoryStats {
    let mut memory = MemoryStats::default();
    for line in meminfo.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let kib: u64 = value.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match key {
            "MemTotal" => memory.total = kib * 1024,
            "MemAvailable" => memory.available = kib * 1024,
            "MemFree" => memory.free = kib * 1024,
            _ => {}
        }
    }
    memory
}

/// A mounted block device: (device, mount point).
#[derive(Debug, PartialEq, Eq)]
struct BlockMount {
    device: String,
    mount: String,
}

/// The mounts of `/dev/...` devices, each device once (its first mount).
fn block_mounts(mounts: &str) -> Vec<BlockMount> {
    let mut seen = Vec::new();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(mount)) = (fields.next(), fields.next()) else { continue };
        if !device.starts_with("/dev/") || seen.iter().any(|m: &BlockMount| m.device == device) {
            continue;
        }
        seen.push(BlockMount { device: unescape_mount(device), mount: unescape_mount(mount) });
    }
    seen
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn disk_usage(mount: BlockMount) -> Option<DiskStats> {
    let vfs = rustix::fs::statvfs(mount.mount.as_str()).ok()?;
    let block = vfs.f_frsize;
    Some(DiskStats {
        total: vfs.f_blocks * block,
        used: vfs.f_blocks.saturating_sub(vfs.f_bfree) * block,
        available: vfs.f_bavail * block,
        mount: mount.mount,
        device: mount.device,
    })
}

/// The byte counters of `/proc/net/dev`, loopback left out.
fn parse_net_dev(dev: &str) -> Vec<NetStats> {
    dev.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let counters: Vec<u64> = counters.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            if name == "lo" || counters.len() < 9 {
                return None;
            }
            Some(NetStats { interface: name.to_string(), rx_bytes: counters[0], tx_bytes: counters[8] })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_fold_into_four_sums() {
        let stat = "cpu  100 5 40 1000 20 3 2 7 0 0\ncpu0 50 2 20 500 10 1 1 3 0 0\ncpu1 50 3 20 500 10 2 1 4 0 0\n\
                    intr 12345\nctxt 999\ncpufreq nonsense\n";
        let (times, cpus) = parse_cpu(stat);
        assert_eq!(times, CpuTimes { user: 105, system: 45, idle: 1020, steal: 7 });
        assert_eq!(cpus, 2);
        assert_eq!(times.total(), 1177);
        assert_eq!(parse_cpu(""), (CpuTimes::default(), 0));
    }

    #[test]
    fn uptime_load_and_memory_are_read() {
        assert_eq!(parse_uptime("12345.67 24000.00\n"), 12345.67);
        assert_eq!(parse_loadavg("0.52 0.58 0.59 2/345 12345\n"), [0.52, 0.58, 0.59]);
        let meminfo =
            "MemTotal:        2014088 kB\nMemFree:          120516 kB\nMemAvailable:    1514136 kB\nBuffers: 1 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            MemoryStats { total: 2014088 * 1024, available: 1514136 * 1024, free: 120516 * 1024 }
        );
    }

    #[test]
    fn only_block_devices_are_disks() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\ntmpfs /run tmpfs rw 0 0\n\
                      /dev/vdb /work ext4 rw 0 0\n/dev/vda /mnt/again ext4 rw 0 0\n/dev/vdc /mnt/with\\040space ext4 rw 0 0\n";
        let found = block_mounts(mounts);
        let pairs: Vec<(&str, &str)> = found.iter().map(|m| (m.device.as_str(), m.mount.as_str())).collect();
        assert_eq!(pairs, [("/dev/vda", "/"), ("/dev/vdb", "/work"), ("/dev/vdc", "/mnt/with space")]);
        assert_eq!(unescape_mount("a\\134b\\011c\\9"), "a\\b\tc\\9");
    }

    #[test]
    fn network_counters_skip_loopback() {
        let dev = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:  1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  \
            eth0: 123456    100    0    0    0     0          0         0    654321     90    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(dev), [NetStats { interface: "eth0".into(), rx_bytes: 123456, tx_bytes: 654321 }]);
    }

    #[test]
    fn this_machine_has_counters() {
        let stats = collect();
        assert!(stats.cpus >= 1 && stats.cpu.total() > 0 && stats.memory.total > 0 && stats.uptime_secs > 0.0);
    }
}
