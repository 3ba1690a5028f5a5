//! Routing the VM domain (`~vm`) on systemd-resolved to banger's DNS server
//! on the bridge link, so the host itself resolves `NAME.vm`, and undoing
//! it. `resolvectl` runs behind the narrow [`Resolvectl`] trait; the
//! settings are runtime only (resolved forgets them when the link goes).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// Where systemd-resolved keeps its runtime state while it runs.
pub const RESOLVED_RUNTIME_DIR: &str = "/run/systemd/resolve";

/// Errors of resolved routing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `resolvectl` could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `resolvectl` ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it said, trimmed.
        stderr: String,
    },
}

/// The host effects resolved routing needs: running `resolvectl` and
/// seeing whether resolved runs. Calls are short and blocking; from async
/// code, call through `spawn_blocking`.
pub trait Resolvectl: Send + Sync {
    /// Runs `resolvectl ARGS...`; fails if it exits non-zero.
    fn run(&self, args: &[&str]) -> Result<(), Error>;
    /// Whether resolved's runtime directory exists (resolved is running).
    fn runtime_dir_exists(&self) -> bool;
}

/// The real `resolvectl` from `PATH`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolvectl;

impl Resolvectl for SystemResolvectl {
    fn run(&self, args: &[&str]) -> Result<(), Error> {
        let command = command_line(args);
        let out = Command::new("resolvectl")
            .args(args)
            .output()
            .map_err(|source| Error::Spawn { command: command.clone(), source })?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    fn runtime_dir_exists(&self) -> bool {
        Path::new(RESOLVED_RUNTIME_DIR).is_dir()
    }
}

fn command_line(args: &[&str]) -> String {
    std::iter::once("resolvectl").chain(args.iter().copied()).collect::<Vec<_>>().join(" ")
}

/// A [`Resolvectl`] that records each command line and runs nothing, for
/// tests; commands starting with a chosen prefix can be made to fail.
#[derive(Debug)]
pub struct RecordingResolvectl {
    running: bool,
    failing: Vec<String>,
    calls: Mutex<Vec<String>>,
}

impl RecordingResolvectl {
    /// A fake for a host where resolved runs (`running`) or not.
    pub fn new(running: bool) -> RecordingResolvectl {
        RecordingResolvectl { running, failing: Vec::new(), calls: Mutex::new(Vec::new()) }
    }

    /// Makes every command line starting with `prefix` fail (it is still
    /// recorded), e.g. `"resolvectl default-route"` for an old systemd.
    pub fn failing(mut self, prefix: &str) -> RecordingResolvectl {
        self.failing.push(prefix.to_owned());
        self
    }

    /// The command lines run so far, e.g. `resolvectl domain banger0 ~vm`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Resolvectl for RecordingResolvectl {
    fn run(&self, args: &[&str]) -> Result<(), Error> {
        let command = command_line(args);
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(command.clone());
        if self.failing.iter().any(|p| command.starts_with(p.as_str())) {
            return Err(Error::Failed {
                command,
                status: "exit status: 1".to_owned(),
                stderr: "failing on purpose".to_owned(),
            });
        }
        Ok(())
    }

    fn runtime_dir_exists(&self) -> bool {
        self.running
    }
}

/// Routes a domain on systemd-resolved to banger's DNS server.
#[derive(Debug)]
pub struct ResolvedRouting<R: Resolvectl = SystemResolvectl> {
    ctl: R,
    domain: String,
}

impl<R: Resolvectl> ResolvedRouting<R> {
    /// Routing of `domain` (`vm`, without dots) through `ctl`.
    pub fn new(ctl: R, domain: &str) -> ResolvedRouting<R> {
        ResolvedRouting { ctl, domain: domain.trim_matches('.').to_owned() }
    }

    /// The `Resolvectl` underneath (the fake's recorded calls, in tests).
    pub fn ctl(&self) -> &R {
        &self.ctl
    }

    /// Whether resolved runs here, so routing can work: its runtime
    /// directory exists and `resolvectl status` succeeds.
    pub fn available(&self) -> bool {
        self.ctl.runtime_dir_exists() && self.ctl.run(&["status"]).is_ok()
    }

    /// Sends `~DOMAIN` questions on `link` to `addr` (port 53), and only
    /// those. On failure, what was set is reverted.
    pub fn route(&self, link: &str, addr: Ipv4Addr) -> Result<(), Error> {
        let addr = addr.to_string();
        let routing_domain = format!("~{}", self.domain);
        let set = self.ctl.run(&["dns", link, &addr]).and_then(|()| self.ctl.run(&["domain", link, &routing_domain]));
        if let Err(e) = set {
            if let Err(undo) = self.revert(link) {
                tracing::debug!(%link, error = %undo, "resolved revert after a failed route failed");
            }
            return Err(e);
        }
        // Without this, resolved may also send other names to the link
        // (systemd < 240 has no default-route setting: routing by domain
        // still works there, so a failure is fine).
        if let Err(e) = self.ctl.run(&["default-route", link, "false"]) {
            tracing::debug!(%link, error = %e, "resolvectl default-route not supported");
        }
        tracing::info!(%link, %addr, domain = %self.domain, "routed on systemd-resolved");
        Ok(())
    }

    /// Undoes [`ResolvedRouting::route`]: resolved forgets every setting
    /// banger made on `link`.
    pub fn revert(&self, link: &str) -> Result<(), Error> {
        self.ctl.run(&["revert", link])
    }
}

/// What `banger doctor` tells a host without systemd-resolved: how to get
/// `.vm` names resolved by banger's DNS server at `addr`.
pub fn without_resolved_advice(addr: Ipv4Addr) -> String {
    format!(
        "systemd-resolved is not running, so the host does not resolve NAME.vm by itself; \
banger's DNS server answers them at {addr}.\n\
- With dnsmasq as the host's resolver (directly or as NetworkManager's dns=dnsmasq), \
add the line `server=/vm/{addr}` to a file in /etc/dnsmasq.d/ \
(/etc/NetworkManager/dnsmasq.d/ for NetworkManager's) and restart it.\n\
- With a plain /etc/resolv.conf, a `nameserver {addr}` line is not enough: the resolver \
asks the listed servers in order and takes the first answer, so after another server's \
\"no such name\" it never asks {addr}; listed first, every host lookup stalls for a timeout \
whenever bangerd is down. Run a local resolver that routes by domain (systemd-resolved, \
or dnsmasq with the line above) and point resolv.conf at it.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

    #[test]
    fn route_sets_dns_domain_and_default_route() {
        let routing = ResolvedRouting::new(RecordingResolvectl::new(true), "vm");
        routing.route("banger0", BRIDGE).unwrap();
        assert_eq!(
            routing.ctl().calls(),
            [
                "resolvectl dns banger0 10.213.0.1",
                "resolvectl domain banger0 ~vm",
                "resolvectl default-route banger0 false",
            ]
        );
    }

    #[test]
    fn old_systemd_without_default_route_still_routes() {
        let fake = RecordingResolvectl::new(true).failing("resolvectl default-route");
        let routing = ResolvedRouting::new(fake, ".vm.");
        routing.route("banger0", BRIDGE).unwrap();
        assert_eq!(routing.ctl().calls()[1], "resolvectl domain banger0 ~vm");
        assert_eq!(routing.ctl().calls().len(), 3);
    }

    #[test]
    fn a_failed_route_is_reverted() {
        let fake = RecordingResolvectl::new(true).failing("resolvectl domain");
        let routing = ResolvedRouting::new(fake, "vm");
        let err = routing.route("banger0", BRIDGE).unwrap_err();
        assert!(matches!(&err, Error::Failed { command, .. } if command == "resolvectl domain banger0 ~vm"));
        assert_eq!(
            routing.ctl().calls(),
            ["resolvectl dns banger0 10.213.0.1", "resolvectl domain banger0 ~vm", "resolvectl revert banger0",]
        );
    }

    #[test]
    fn revert_reverts_the_link() {
        let routing = ResolvedRouting::new(RecordingResolvectl::new(true), "vm");
        routing.revert("banger0").unwrap();
        assert_eq!(routing.ctl().calls(), ["resolvectl revert banger0"]);
    }

    #[test]
    fn available_needs_the_runtime_dir_and_a_working_status() {
        let routing = ResolvedRouting::new(RecordingResolvectl::new(true), "vm");
        assert!(routing.available());
        assert_eq!(routing.ctl().calls(), ["resolvectl status"]);

        let routing = ResolvedRouting::new(RecordingResolvectl::new(false), "vm");
        assert!(!routing.available());
        assert!(routing.ctl().calls().is_empty(), "no resolvectl without resolved");

        let fake = RecordingResolvectl::new(true).failing("resolvectl status");
        assert!(!ResolvedRouting::new(fake, "vm").available());
    }

    #[test]
    fn advice_names_the_address_and_both_ways() {
        let text = without_resolved_advice(BRIDGE);
        assert!(text.contains("server=/vm/10.213.0.1"));
        assert!(text.contains("`nameserver 10.213.0.1` line is not enough"));
        assert!(text.lines().count() <= 4, "keep it short:\n{text}");
    }
}
