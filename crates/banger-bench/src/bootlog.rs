//! Reads a VM's create timeline out of bangerd's log: the default
//! `tracing-subscriber` format puts a microsecond RFC 3339 timestamp first
//! on each line and the fields as `key=value` after the message.

use std::time::SystemTime;

/// When bangerd logged each step of one `vm create`, from its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateTimeline {
    /// "operation started" (the create request was accepted).
    pub op_started: SystemTime,
    /// "starting QEMU" (debug, banger_vmm::qemu): just before QEMU is spawned.
    pub vmm_spawn: Option<SystemTime>,
    /// "VMM started": after the driver's start() returned, that is after
    /// QEMU's `-daemonize` parent exited (QEMU initialised).
    pub vmm_started: SystemTime,
    /// "VM running": the agent answered the hello.
    pub vm_running: Option<SystemTime>,
    /// "operation succeeded".
    pub op_succeeded: Option<SystemTime>,
    /// "guest agent installed" (debug): how long writing the daemon's
    /// agent into the VM's disk took, in ms, as bangerd measured it.
    pub agent_install_ms: Option<u64>,
}

/// The timeline of the create of VM `vm` in `log`, or `None` if its
/// "operation started" or "VMM started" line is missing.
pub fn create_timeline(log: &str, vm: &str) -> Option<CreateTimeline> {
    let mut op: Option<(String, SystemTime)> = None;
    let (mut vmm_spawn, mut vmm_started, mut vm_running, mut op_succeeded) = (None, None, None, None);
    let mut agent_install_ms = None;
    for raw in log.lines() {
        let line = strip_ansi(raw);
        let Some(at) = timestamp(&line) else { continue };
        if op.is_none() {
            if line.contains(" operation started ")
                && field(&line, "kind") == Some("VmCreate")
                && field(&line, "target") == Some(vm)
            {
                op = field(&line, "op").map(|id| (id.to_owned(), at));
            }
            continue;
        }
        let for_vm = field(&line, "vm") == Some(vm);
        if for_vm && line.contains(" guest agent installed ") {
            agent_install_ms = agent_install_ms.or_else(|| field(&line, "ms").and_then(|ms| ms.parse().ok()));
        } else if for_vm && line.contains(" starting QEMU ") {
            vmm_spawn.get_or_insert(at);
        } else if for_vm && line.contains(" VMM started ") {
            vmm_started.get_or_insert(at);
        } else if for_vm && line.contains(" VM running") {
            vm_running.get_or_insert(at);
        } else if line.contains(" operation succeeded ") && field(&line, "op") == op.as_ref().map(|(id, _)| id.as_str())
        {
            op_succeeded.get_or_insert(at);
        }
    }
    let (_, op_started) = op?;
    Some(CreateTimeline {
        op_started,
        vmm_spawn,
        vmm_started: vmm_started?,
        vm_running,
        op_succeeded,
        agent_install_ms,
    })
}

/// Seconds from `from` to `to` (negative if `to` is earlier).
pub fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn timestamp(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(line.split_whitespace().next()?).ok()
}

/// The value of field `key`, without the quotes `tracing` puts around strings.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!(" {key}=");
    let start = line.find(&needle)? + needle.len();
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.split('"').next();
    }
    rest.split_whitespace().next()
}

/// Removes terminal colour codes, in case the log was written with them.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-27T04:42:36.100000Z  INFO bangerd::operations: operation started op=op-aaa kind=VmCreate target=\"bench-10\"
2026-11-27T04:42:36.422043Z  INFO bangerd::operations: operation started op=op-bbb kind=VmCreate target=\"bench-1\"
2026-11-27T04:42:36.430000Z DEBUG bangerd::vm::agent_inject: guest agent installed vm=bench-1 path=/usr/bin/banger-agent ms=24
2026-11-27T04:42:36.452043Z DEBUG banger_vmm::qemu: starting QEMU vm=bench-1 binary=qemu-system-x86_64 args=[\"-name\"]
2026-11-27T04:42:36.522043Z  INFO bangerd::vm::lifecycle: VMM started vm=bench-10 pid=7 vmm=Qemu
\u{1b}[2m2026-11-27T04:42:36.622043Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m bangerd::vm::lifecycle: VMM started vm=bench-1 pid=8 vmm=Qemu
2026-11-27T04:42:41.622043Z  INFO bangerd::vm::lifecycle: VM running vm=bench-1
2026-11-27T04:42:41.700000Z  INFO bangerd::operations: operation succeeded op=op-bbb target=bench-1
";

    #[test]
    fn finds_one_vms_steps_among_others() {
        let t = create_timeline(LOG, "bench-1").unwrap();
        let ms = |to| (seconds_between(t.op_started, to) * 1e3).round();
        assert_eq!(ms(t.vmm_spawn.unwrap()), 30.0);
        assert_eq!(ms(t.vmm_started), 200.0);
        assert_eq!(ms(t.vm_running.unwrap()), 5200.0);
        assert_eq!(ms(t.op_succeeded.unwrap()), 5278.0);
        assert_eq!(t.agent_install_ms, Some(24));
    }

    #[test]
    fn missing_lines_give_none() {
        assert!(create_timeline(LOG, "bench-2").is_none());
        let t = create_timeline(LOG, "bench-10").unwrap();
        assert!(t.vmm_spawn.is_none() && t.vm_running.is_none() && t.agent_install_ms.is_none());
    }
}
