//! The nftables ruleset banger owns: computed from a [`Ruleset`] by a pure
//! [`Ruleset::render`], applied with `nft -f -` in one transaction that
//! replaces banger's tables and nothing else.
//!
//! Every rule matches banger's bridge (by interface or subnet) and every base
//! chain's policy is accept, so traffic that never touches the bridge is left
//! to whatever else the host runs. The reverse is not true: a drop in another
//! table (a host firewall with a forward policy of drop) still drops guest
//! traffic this ruleset accepts, because nftables runs every table's chains.

use std::fmt;
use std::fmt::Write as _;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::subnet::Subnet;
use crate::tap::TAP_PREFIX;

/// What went wrong running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A name that cannot be written into a ruleset safely.
    #[error("{what} {name:?} is not a valid name for nftables")]
    BadName {
        /// Which name: "table" or "bridge".
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// `nft` could not be started or talked to.
    #[error("cannot run nft")]
    Spawn(#[source] std::io::Error),
    /// `nft` ran and refused.
    #[error("nft could not {action}: {stderr}")]
    Failed {
        /// What was asked of nft.
        action: String,
        /// What nft said.
        stderr: String,
    },
}

/// A transport protocol of an allowed host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Everything the ruleset depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Name of banger's tables (`table inet NAME` and `table bridge NAME`).
    pub table: String,
    /// The bridge the guests' taps are attached to.
    pub bridge: String,
    /// The guests' subnet; its host address is the bridge's.
    pub subnet: Subnet,
    /// Ports on the bridge's address that guests may open, besides DNS.
    pub allowed_host_ports: Vec<(Proto, u16)>,
    /// The port of the DNS server on the bridge's address (UDP and TCP).
    pub dns_port: u16,
    /// Whether guests may reach each other.
    pub guest_to_guest: bool,
}

impl Ruleset {
    /// The nft script that replaces banger's tables with this ruleset.
    ///
    /// Each table is first declared (a no-op if present) and deleted, so the
    /// script works whether or not it was applied before; `nft -f` runs the
    /// file as one transaction, so nothing sees a state without the rules.
    ///
    /// Two tables, because a bridge switches guest-to-guest frames without
    /// routing them: the inet forward hook never sees them (unless the host
    /// loaded br_netfilter), so that policy lives in a `bridge` family table
    /// too. There it matches the ports by banger's tap prefix (`bgtap*`), not
    /// by bridge name: `meta ibrname` needs nft_meta_bridge, which some
    /// kernels lack, and only banger names links `bgtap*`.
    /// Guests' traffic to elsewhere is forwarded only from subnet addresses,
    /// so a guest cannot put spoofed sources on the host's network; allowed
    /// host ports are open on the bridge's address only.
    pub fn render(&self) -> String {
        let t = &self.table;
        let br = &self.bridge;
        let net = self.subnet;
        let host = net.host_address();
        let g2g = if self.guest_to_guest { "accept" } else { "drop" };
        let mut s = String::new();
        for family in ["inet", "bridge"] {
            let _ = writeln!(s, "table {family} {t} {{}}\ndelete table {family} {t}");
        }
        let _ = writeln!(s, "table inet {t} {{");
        let _ = writeln!(s, "\tchain postrouting {{");
        let _ = writeln!(s, "\t\ttype nat hook postrouting priority srcnat; policy accept;");
        let _ = writeln!(s, "\t\tip saddr {net} oifname != \"{br}\" masquerade");
        let _ = writeln!(s, "\t}}\n");
        let _ = writeln!(s, "\tchain forward {{");
        let _ = writeln!(s, "\t\ttype filter hook forward priority filter; policy accept;");
        let _ = writeln!(s, "\t\tiifname \"{br}\" oifname \"{br}\" {g2g}");
        let _ = writeln!(s, "\t\tiifname \"{br}\" ip saddr {net} accept");
        let _ = writeln!(s, "\t\tiifname \"{br}\" drop");
        let _ = writeln!(s, "\t\toifname \"{br}\" ct state established,related accept");
        let _ = writeln!(s, "\t\toifname \"{br}\" drop");
        let _ = writeln!(s, "\t}}\n");
        let _ = writeln!(s, "\tchain input {{");
        let _ = writeln!(s, "\t\ttype filter hook input priority filter; policy accept;");
        let _ = writeln!(s, "\t\tiifname \"{br}\" ct state established,related accept");
        let dns = [(Proto::Udp, self.dns_port), (Proto::Tcp, self.dns_port)];
        for (proto, port) in dns.iter().chain(&self.allowed_host_ports) {
            let _ = writeln!(s, "\t\tiifname \"{br}\" ip daddr {host} {proto} dport {port} accept");
        }
        let _ = writeln!(s, "\t\tiifname \"{br}\" drop");
        let _ = writeln!(s, "\t}}\n}}");
        let _ = writeln!(s, "table bridge {t} {{");
        let _ = writeln!(s, "\tchain forward {{");
        let _ = writeln!(s, "\t\ttype filter hook forward priority filter; policy accept;");
        let _ = writeln!(s, "\t\tiifname \"{TAP_PREFIX}*\" oifname \"{TAP_PREFIX}*\" {g2g}");
        let _ = writeln!(s, "\t}}\n}}");
        s
    }

    /// Refuses names that could break out of the script's quoting.
    fn validate(&self) -> Result<(), NftError> {
        validate_table(&self.table)?;
        let bridge_ok = !self.bridge.is_empty()
            && self.bridge.len() <= 15
            && self.bridge.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !bridge_ok {
            return Err(NftError::BadName { what: "bridge", name: self.bridge.clone() });
        }
        Ok(())
    }
}

/// Replaces banger's tables with `rules`, atomically.
pub async fn apply(rules: &Ruleset) -> Result<(), NftError> {
    rules.validate()?;
    nft(&["-f", "-"], &rules.render(), "apply the ruleset").await?;
    Ok(())
}

/// Checks `rules` with `nft -c` (parsed and validated by the kernel, not
/// committed).
pub async fn check(rules: &Ruleset) -> Result<(), NftError> {
    rules.validate()?;
    nft(&["-c", "-f", "-"], &rules.render(), "check the ruleset").await?;
    Ok(())
}

/// Removes banger's tables; absent tables are fine.
pub async fn remove(table: &str) -> Result<(), NftError> {
    validate_table(table)?;
    let mut script = String::new();
    for family in ["inet", "bridge"] {
        let _ = writeln!(script, "table {family} {table} {{}}\ndelete table {family} {table}");
    }
    nft(&["-f", "-"], &script, &format!("remove table {table}")).await?;
    Ok(())
}

/// Whether banger's inet table exists.
pub async fn table_exists(table: &str) -> Result<bool, NftError> {
    validate_table(table)?;
    let out = nft(&["list", "tables", "inet"], "", "list tables").await?;
    let wanted = format!("table inet {table}");
    Ok(out.lines().any(|line| line.trim() == wanted))
}

fn validate_table(table: &str) -> Result<(), NftError> {
    let mut bytes = table.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && table.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(NftError::BadName { what: "table", name: table.to_string() })
    }
}

/// Runs nft with `stdin` as its input and returns its stdout.
async fn nft(args: &[&str], stdin: &str, action: &str) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Spawn)?;
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(stdin.as_bytes()).await.map_err(NftError::Spawn)?;
    drop(input);
    let out = child.wait_with_output().await.map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            action: action.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ruleset the golden file holds.
    fn golden_ruleset() -> Ruleset {
        Ruleset {
            table: "banger".into(),
            bridge: "banger0".into(),
            subnet: Subnet::DEFAULT,
            allowed_host_ports: vec![(Proto::Tcp, 22), (Proto::Udp, 9999)],
            dns_port: 53,
            guest_to_guest: false,
        }
    }

    #[test]
    fn render_matches_golden_file() {
        let golden = include_str!("../tests/golden/ruleset.nft");
        let rendered = golden_ruleset().render();
        if rendered != golden {
            panic!("rendered ruleset differs from tests/golden/ruleset.nft:\n{rendered}");
        }
    }

    #[test]
    fn guest_to_guest_flips_both_tables() {
        let open = Ruleset { guest_to_guest: true, ..golden_ruleset() }.render();
        assert!(open.contains("iifname \"banger0\" oifname \"banger0\" accept"));
        assert!(open.contains("iifname \"bgtap*\" oifname \"bgtap*\" accept"));
        assert!(!open.contains("\"bgtap*\" drop"));
        assert!(!open.contains("iifname \"banger0\" oifname \"banger0\" drop"));
    }

    #[test]
    fn every_rule_names_the_bridge() {
        let script = golden_ruleset().render();
        for line in script.lines().map(str::trim) {
            let is_rule = !line.is_empty()
                && !line.starts_with("table")
                && !line.starts_with("delete")
                && !line.starts_with("chain")
                && !line.starts_with("type")
                && line != "}";
            if is_rule {
                let on_bridge = line.contains("\"banger0\"") || line.contains("\"bgtap*\"");
                assert!(on_bridge, "rule not limited to banger's links: {line}");
            }
            if line.starts_with("type") {
                assert!(line.ends_with("policy accept;"), "{line}");
            }
        }
    }

    #[test]
    fn refuses_names_that_break_quoting() {
        let bad_bridge = Ruleset { bridge: "br\" accept".into(), ..golden_ruleset() };
        assert!(matches!(bad_bridge.validate(), Err(NftError::BadName { what: "bridge", .. })));
        for table in ["", "1x", "a b", "a;b"] {
            assert!(validate_table(table).is_err(), "{table:?}");
        }
        assert!(golden_ruleset().validate().is_ok());
    }
}
