//! Test support: network namespaces a test creates and removes, veth pairs
//! between them, and running a command or a closure inside one, so network
//! tests never touch the machine's own namespace.
//!
//! Every effect here goes through `ip -n NAME` or a thread that has entered
//! the namespace; nothing is ever created in the caller's own namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

/// Where `ip netns add` mounts the namespaces it names.
const NETNS_DIR: &str = "/run/netns";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted when dropped.
///
/// Drop only unmounts the name (`ip netns del`): it kills nothing. A process
/// the test started inside keeps the namespace alive until it exits, so the
/// test must end its own children before dropping.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `bgt-<prefix>-<pid>-<n>` with its `lo` up.
    pub fn new(prefix: &str) -> io::Result<Netns> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("bgt-{prefix}-{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name])?;
        // From here on Drop removes it, even if bringing `lo` up fails.
        let ns = Netns { name };
        ns.up("lo")?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a fresh thread that has entered the namespace, and returns
    /// its result (a panic in `f` is re-raised here). Sockets, netlink
    /// handles and child processes made inside `f` live in the namespace;
    /// sockets stay there when returned out of `f`.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("{NETNS_DIR}/{}", self.name);
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // Only this thread moves: setns(CLONE_NEWNET) is per thread.
                move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                    .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
                f()
            });
            match thread.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Creates a veth pair: `name_here` in this namespace, `name_there` in
    /// `other`. Both ends are left down.
    pub fn veth(&self, other: &Netns, name_here: &str, name_there: &str) -> io::Result<()> {
        self.ip(&["link", "add", name_here, "type", "veth", "peer", "name", name_there, "netns", &other.name]).map(drop)
    }

    /// Adds an address such as `10.1.2.3/24` to `ifname`.
    pub fn addr(&self, ifname: &str, cidr: &str) -> io::Result<()> {
        self.ip(&["addr", "add", cidr, "dev", ifname]).map(drop)
    }

    /// Brings `ifname` up.
    pub fn up(&self, ifname: &str) -> io::Result<()> {
        self.ip(&["link", "set", ifname, "up"]).map(drop)
    }

    /// Adds the default route via `gateway`.
    pub fn default_route(&self, gateway: &str) -> io::Result<()> {
        self.ip(&["route", "add", "default", "via", gateway]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("banger-netns: cannot delete namespace {}: {e}", self.name);
        }
    }
}

/// Whether the test can run: root, and every tool in `tools` on the PATH.
///
/// When something is missing, panics if `CI=true` (a CI run must not skip
/// silently), otherwise prints why and returns false so the test can return.
pub fn require(test: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for tool in tools {
        let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
        if !found {
            missing.push(format!("`{tool}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (CI=true: not skipping)");
    }
    eprintln!("skipping {why}");
    false
}

fn run_ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
