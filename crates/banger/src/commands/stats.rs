//! `banger vm stats` and `banger vm ports`: what a running VM uses, and
//! what its guest listens on.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use banger_api::VmStats;

use crate::{output, Context};

/// How often `--watch` samples.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Prints the VM's stats once, or with `watch` every second until Ctrl-C
/// (JSON: one object a line).
pub async fn stats(ctx: &Context, vm: &str, watch: bool) -> anyhow::Result<()> {
    if !watch {
        let stats = ctx.client.vm_stats(vm).await?;
        if ctx.json {
            return output::json(&stats);
        }
        print!("{}", render(vm, &stats));
        return Ok(());
    }
    let redraw = !ctx.json && std::io::stdout().is_terminal();
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watching = async {
        loop {
            ticks.tick().await;
            let stats = ctx.client.vm_stats(vm).await?;
            let mut stdout = std::io::stdout().lock();
            if ctx.json {
                writeln!(stdout, "{}", serde_json::to_string(&stats)?)?;
            } else if redraw {
                // Home and clear, then the figures: the view stays in place.
                write!(stdout, "\x1b[H\x1b[2J{}", render(vm, &stats))?;
            } else {
                writeln!(stdout, "{}", render(vm, &stats))?;
            }
            stdout.flush()?;
        }
    };
    tokio::select! {
        result = watching => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// The human view: a few aligned lines.
pub fn render(vm: &str, s: &VmStats) -> String {
    let g = &s.guest;
    let mut out = String::new();
    let load = g.load.iter().map(|l| format!("{l:.2}")).collect::<Vec<_>>().join(" ");
    let cpus = if g.cpus == 1 { "1 CPU".to_owned() } else { format!("{} CPUs", g.cpus) };
    out += &format!("VM {vm}, up {}\n", uptime(g.uptime_secs));
    out += &format!("cpu     {:5.1}% of {cpus}   load {load}\n", g.cpu_percent);
    let m = &g.memory;
    out += &format!(
        "memory  {} of {} used ({:.0}%)\n",
        output::size(m.used_bytes),
        output::size(m.total_bytes),
        percent(m.used_bytes, m.total_bytes)
    );
    for d in &g.disks {
        out += &format!(
            "disk    {} of {} used ({:.0}%) on {} ({})\n",
            output::size(d.used_bytes),
            output::size(d.total_bytes),
            percent(d.used_bytes, d.total_bytes),
            d.mount,
            d.device
        );
    }
    for n in &g.net {
        out += &format!(
            "net     {}: rx {}/s tx {}/s (since boot: rx {} tx {})\n",
            n.interface,
            output::size(n.rx_bytes_per_sec as u64),
            output::size(n.tx_bytes_per_sec as u64),
            output::size(n.rx_bytes),
            output::size(n.tx_bytes)
        );
    }
    out += &format!(
        "vmm     pid {}: cpu {:.1}% of a host CPU, rss {}\n",
        s.vmm.pid,
        s.vmm.cpu_percent,
        output::size(s.vmm.rss_bytes)
    );
    out
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn uptime(secs: f64) -> String {
    let secs = secs.max(0.0) as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// Prints the guest's listeners as a table.
pub async fn ports(ctx: &Context, vm: &str) -> anyhow::Result<()> {
    let ports = ctx.client.vm_ports(vm).await?;
    if ctx.json {
        return output::json(&ports);
    }
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = ports
        .into_iter()
        .map(|p| {
            let reach = reach(vm, &p.address, p.port);
            vec![p.protocol, reach, p.address, dash(p.pid.map(|p| p.to_string())), dash(p.process)]
        })
        .collect();
    output::table(&["PROTO", "PORT", "ADDRESS", "PID", "PROCESS"], &rows);
    Ok(())
}

/// How a listener is reached: `NAME.vm:PORT` over the network, or only
/// from inside the guest (and through `vm forward`) when it listens on
/// loopback.
fn reach(vm: &str, address: &str, port: u16) -> String {
    let loopback = address.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
    if loopback {
        format!("{port} (guest loopback)")
    } else {
        format!("{vm}.vm:{port}")
    }
}

#[cfg(test)]
mod tests {
    use banger_api::{GuestDisk, GuestMemory, GuestNet, GuestStats, VmmStats};

    use super::*;

    #[test]
    fn the_human_view_has_a_line_per_thing() {
        let stats = VmStats {
            interval_ms: 250,
            guest: GuestStats {
                uptime_secs: 192.4,
                cpus: 2,
                cpu_percent: 12.54,
                load: vec![0.1, 0.05, 0.0],
                memory: GuestMemory { total_bytes: 200 << 20, available_bytes: 150 << 20, used_bytes: 50 << 20 },
                disks: vec![GuestDisk {
                    mount: "/".into(),
                    device: "/dev/vda".into(),
                    total_bytes: 1 << 30,
                    used_bytes: 256 << 20,
                    available_bytes: 768 << 20,
                }],
                net: vec![GuestNet {
                    interface: "eth0".into(),
                    rx_bytes: 2048,
                    tx_bytes: 0,
                    rx_bytes_per_sec: 1536.0,
                    tx_bytes_per_sec: 0.0,
                }],
            },
            vmm: VmmStats { pid: 42, cpu_percent: 101.26, rss_bytes: 180 << 20 },
        };
        let text = render("dev", &stats);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "VM dev, up 3m12s");
        assert_eq!(lines[1], "cpu      12.5% of 2 CPUs   load 0.10 0.05 0.00");
        assert_eq!(lines[2], "memory  50.0 MiB of 200.0 MiB used (25%)");
        assert_eq!(lines[3], "disk    256.0 MiB of 1.0 GiB used (25%) on / (/dev/vda)");
        assert_eq!(lines[4], "net     eth0: rx 1.5 KiB/s tx 0 B/s (since boot: rx 2.0 KiB tx 0 B)");
        assert_eq!(lines[5], "vmm     pid 42: cpu 101.3% of a host CPU, rss 180.0 MiB");
    }
}
