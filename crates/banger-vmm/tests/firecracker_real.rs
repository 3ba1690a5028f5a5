//! The Firecracker driver against the real Firecracker v1.16.1 (and its
//! jailer, in `firecracker_real/jailer.rs`): spawn, every request,
//! InstanceStart, stop, kill, the failure report, and cleanup after each.
//! KVM here runs no ordinary guest kernel (see DESIGN.md), so the guests
//! are tiny hand-made ELF "kernels" that print a line on the serial port
//! and then halt for ever or crash at once: what a user sees of a guest
//! that never comes up, in milliseconds instead of a minute.
//!
//! The binaries are looked up in `../shared/bin` beside the workspace (or
//! an ancestor's `shared/bin`), then on PATH; under `CI=true` a missing one
//! fails the test. Each test has its own directories and a whole-test
//! timeout, and kills what it started whatever happens.

#[path = "firecracker_real/jailer.rs"]
mod jailer;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_vmm::firecracker::Firecracker;
use banger_vmm::{AgentEndpoint, DiskSpec, VmSpec, Vmm, VmmError, VmmProcess};

/// Every test's bound, start to end.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What the tiny guests print on the serial console.
const GUEST_LINE: &str = "BANGER-TINY-GUEST";

/// Where a Firecracker binary is: `<workspace>/../shared/bin`, an
/// ancestor's `shared/bin` (a worktree's workspace is one level deeper),
/// then PATH. `None` skips the test, except under `CI=true`, where it fails.
fn binary(name: &str) -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap();
    let shared = workspace.ancestors().skip(1).map(|dir| dir.join("shared/bin").join(name));
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = shared.chain(on_path).find(|path| path.is_file());
    let what = format!("{name} in ../shared/bin or on PATH, to test the Firecracker driver against the real binary");
    banger_testkit::require(&what, found.is_some()).then(|| found.expect("checked"))
}

/// How the tiny guest ends after printing its line.
#[derive(Debug, Clone, Copy)]
enum GuestEnd {
    /// `hlt` in a loop: never comes up, never exits.
    Hangs,
    /// `ud2` with no interrupt table: a triple fault, which Firecracker
    /// reports as an unexpected vCPU exit before exiting 1.
    Crashes,
    /// Loaded below 1 MiB, which Firecracker's loader refuses, so
    /// InstanceStart fails.
    LoadsTooLow,
}

/// A 64-bit ELF "kernel": prints [`GUEST_LINE`] on COM1, then ends as `end`.
fn tiny_guest(path: &Path, end: GuestEnd) {
    // mov dx,0x3f8; lea rsi,[rip+msg]; 1: lodsb; test al,al; jz 2f;
    // out dx,al; jmp 1b; 2: <end>; msg: "BANGER-TINY-GUEST\n\0"
    let mut code =
        vec![0x66, 0xba, 0xf8, 0x03, 0x48, 0x8d, 0x35, 0x0b, 0, 0, 0, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8];
    code.extend_from_slice(match end {
        GuestEnd::Hangs | GuestEnd::LoadsTooLow => &[0xf4, 0xeb, 0xfd], // hlt; jmp back to it
        GuestEnd::Crashes => &[0x0f, 0x0b, 0x90],                       // ud2; nop
    });
    code.extend_from_slice(GUEST_LINE.as_bytes());
    code.extend_from_slice(b"\n\0");
    let load_addr: u64 = match end {
        GuestEnd::LoadsTooLow => 0x1000,
        _ => 0x10_0000,
    };
    const CODE_OFFSET: u64 = 0x1000;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&load_addr.to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes()); // header size, phdr size and count, shdr size, count, names
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // read + execute
    for word in [CODE_OFFSET, load_addr, load_addr, code.len() as u64, code.len() as u64, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.resize(CODE_OFFSET as usize, 0);
    elf.extend_from_slice(&code);
    std::fs::write(path, elf).unwrap();
}

/// A VM under `dir` (its run directory `dir/run`) with a tiny guest, a
/// writable root disk and a read-only second disk.
fn vm(dir: &Path, name: &str, end: GuestEnd) -> VmSpec {
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let disks_dir = dir.join("disks");
    std::fs::create_dir_all(&disks_dir).unwrap();
    let kernel = disks_dir.join("vmlinux");
    tiny_guest(&kernel, end);
    let disks: Vec<DiskSpec> = [("root.ext4", false), ("tools.ext4", true)]
        .into_iter()
        .map(|(file, read_only)| {
            let path = disks_dir.join(file);
            std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
            DiskSpec { path, read_only }
        })
        .collect();
    VmSpec {
        name: name.into(),
        run_dir,
        kernel,
        initrd: None,
        cmdline: "root=/dev/vda rw init=/sbin/init panic=-1".into(),
        cpus: 1,
        memory_mib: 128,
        disks,
        nics: Vec::new(),
    }
}

/// Kills the VM's Firecracker when a test ends, whatever happened.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(process) = VmmProcess::recorded_in(&self.0) {
            let _ = process.signal(libc::SIGKILL);
        }
    }
}

/// Whether a process with this pid exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
}

/// Waits until `path` holds the line `text`, up to `timeout`; the file's text.
async fn wait_for_text(path: &Path, text: &str, timeout: Duration) -> String {
    // The whole line: the guest's newline may reach the file a read later.
    let line = format!("{text}\n");
    let deadline = Instant::now() + timeout;
    loop {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got.contains(&line) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing of the VM is left but its console: no process, socket, link,
/// pid file, log or jail, and the disks are linked from nowhere else.
fn assert_nothing_left(spec: &VmSpec, pid: Option<u32>, jail_dir: Option<&Path>) {
    if let Some(pid) = pid {
        assert!(!pid_alive(pid), "firecracker (pid {pid}) still runs");
    }
    for file in ["firecracker.sock", "vsock.sock", "vmm.pid", "firecracker.log", "metrics.json", "vmm.log", "jail"] {
        assert!(spec.run_dir.join(file).symlink_metadata().is_err(), "{file} is left behind");
    }
    if let Some(jail_dir) = jail_dir {
        assert!(jail_dir.symlink_metadata().is_err(), "the jail {} is left behind", jail_dir.display());
    }
    for path in spec.disks.iter().map(|d| &d.path).chain([&spec.kernel]) {
        assert_eq!(std::fs::metadata(path).unwrap().nlink(), 1, "{} is still linked", path.display());
    }
}

/// The requests Firecracker's log says it received and answered with 204.
fn answered_requests(log: &str) -> Vec<String> {
    let mut answered = Vec::new();
    let mut pending = None;
    for line in log.lines() {
        if let Some(rest) = line.split_once("received a Put request on \"").map(|(_, rest)| rest) {
            pending = rest.split_once('"').map(|(path, _)| path.to_string());
        } else if line.contains("Status code: 204 No Content") {
            answered.extend(pending.take());
        }
    }
    answered
}

async fn with_timeout(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("the test timed out");
}

#[tokio::test]
async fn real_start_sends_every_request_and_kill_cleans_up() {
    let Some(firecracker) = binary("firecracker") else { return };
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = vm(dir.path(), "real-direct", GuestEnd::Hangs);
        let _guard = KillOnDrop(spec.run_dir.clone());
        let driver = Vmm::Firecracker(Firecracker::new(&firecracker));

        let started = Instant::now();
        let process = driver.start(&spec).await.unwrap();
        eprintln!("real firecracker: spawn to InstanceStart answered in {:?}", started.elapsed());
        assert_eq!(driver.process(&spec.run_dir), Some(process));
        let log = std::fs::read_to_string(spec.run_dir.join("firecracker.log")).unwrap();
        assert!(log.contains("Running Firecracker v1.16.1"), "{log}");
        assert_eq!(
            answered_requests(&log),
            ["/metrics", "/machine-config", "/boot-source", "/drives/rootfs", "/drives/disk1", "/vsock", "/actions"],
            "{log}"
        );
        assert!(spec.run_dir.join("vsock.sock").exists(), "Firecracker binds the vsock socket");
        // The console is the guest's alone: none of Firecracker's own lines.
        let console = wait_for_text(&driver.console_log(&spec.run_dir), GUEST_LINE, Duration::from_secs(10)).await;
        assert_eq!(console, format!("{GUEST_LINE}\n"));

        driver.kill(&spec.run_dir, process).await.unwrap();
        assert_eq!(driver.process(&spec.run_dir), None);
        assert!(spec.run_dir.join("firecracker.log").is_file(), "the log stays for the failure report");
        driver.release(&spec.run_dir).unwrap();
        assert_nothing_left(&spec, Some(process.pid), None);
        assert!(driver.console_log(&spec.run_dir).is_file(), "the console stays for vm logs");
    })
    .await;
}

/// SendCtrlAltDel is answered, but a guest that never came up does not
/// reboot: stop kills Firecracker once its timeout has passed.
#[tokio::test]
async fn real_stop_of_a_guest_that_never_answers_falls_back_to_kill() {
    let Some(firecracker) = binary("firecracker") else { return };
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = vm(dir.path(), "real-stop", GuestEnd::Hangs);
        let _guard = KillOnDrop(spec.run_dir.clone());
        let driver = Vmm::Firecracker(Firecracker::new(&firecracker));
        let process = driver.start(&spec).await.unwrap();

        let timeout = Duration::from_millis(1500);
        let started = Instant::now();
        driver.stop(&spec.run_dir, process, timeout).await.unwrap();
        let took = started.elapsed();
        eprintln!("real firecracker: stop of a silent guest took {took:?}");
        assert!(took >= timeout, "stop must give the guest its time first ({took:?})");
        assert!(took < timeout + Duration::from_secs(5), "stop must kill at its timeout ({took:?})");
        let log = std::fs::read_to_string(spec.run_dir.join("firecracker.log")).unwrap();
        assert_eq!(answered_requests(&log).last().map(String::as_str), Some("/actions"));
        assert!(log.contains(r#"{\"action_type\":\"SendCtrlAltDel\"}"#), "{log}");
        driver.release(&spec.run_dir).unwrap();
        assert_nothing_left(&spec, Some(process.pid), None);
    })
    .await;
}

/// A guest that dies: the failure report says why Firecracker exited (its
/// log's errors) and what the guest printed, each in its own paragraph.
#[tokio::test]
async fn real_crash_is_reported_with_firecrackers_reason_and_the_guest_console() {
    let Some(firecracker) = binary("firecracker") else { return };
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = vm(dir.path(), "real-crash", GuestEnd::Crashes);
        let _guard = KillOnDrop(spec.run_dir.clone());
        let driver = Vmm::Firecracker(Firecracker::new(&firecracker));
        let process = driver.start(&spec).await.unwrap();
        process.exited().await;

        let report = driver.failure_report(&spec.run_dir);
        eprintln!("{report}");
        let (firecrackers, guests) = report.split_once("The guest's console").expect("a console paragraph");
        assert!(firecrackers.contains("Unexpected exit reason on vcpu run: Shutdown"), "{report}");
        assert!(firecrackers.contains("Firecracker exiting with error. exit_code=1"), "{report}");
        assert!(guests.contains(GUEST_LINE), "{report}");
        assert!(
            !guests.contains("Firecracker") && !guests.contains("INFO"),
            "the console quotes Firecracker: {report}"
        );
        driver.release(&spec.run_dir).unwrap();
        assert_nothing_left(&spec, Some(process.pid), None);
    })
    .await;
}

/// A kernel Firecracker refuses: start fails with Firecracker's own
/// message, and nothing is left.
#[tokio::test]
async fn real_refused_kernel_fails_instance_start_and_cleans_up() {
    let Some(firecracker) = binary("firecracker") else { return };
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = vm(dir.path(), "real-refused", GuestEnd::LoadsTooLow);
        let _guard = KillOnDrop(spec.run_dir.clone());
        let error = Firecracker::new(&firecracker).start(&spec).await.unwrap_err();
        let VmmError::Api { request, reason } = &error else { panic!("not an API error: {error}") };
        assert_eq!(request, "PUT /actions");
        assert!(reason.starts_with("400: ") && reason.contains("Invalid entry address"), "{reason}");
        assert_nothing_left(&spec, None, None);
        assert!(pgrep_in(&spec.run_dir).is_empty(), "a firecracker of this test still runs");
    })
    .await;
}

/// Firecracker holds a vsock connection in its listen queue until the
/// guest activates the device, which a guest that never comes up never
/// does: one connect attempt to the agent still ends within its bound.
#[tokio::test]
async fn real_vsock_connect_to_a_guest_that_never_comes_up_is_bounded() {
    let Some(firecracker) = binary("firecracker") else { return };
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = vm(dir.path(), "real-vsock", GuestEnd::Hangs);
        let _guard = KillOnDrop(spec.run_dir.clone());
        let driver = Vmm::Firecracker(Firecracker::new(&firecracker));
        let process = driver.start(&spec).await.unwrap();
        let endpoint = driver.agent_endpoint(&spec.run_dir);
        assert!(matches!(endpoint, AgentEndpoint::FirecrackerVsock { .. }), "{endpoint:?}");

        let started = Instant::now();
        let attempt = tokio::time::timeout(banger_vmm::CONNECT_ATTEMPT_TIMEOUT * 3, endpoint.connect()).await;
        let took = started.elapsed();
        eprintln!("real firecracker: a vsock connect attempt to a silent guest ended after {took:?}");
        let error = attempt.expect("the connect attempt has no bound").expect_err("no agent can answer");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
        assert!(took < banger_vmm::CONNECT_ATTEMPT_TIMEOUT + Duration::from_millis(500), "{took:?}");
        assert!(process.is_running(), "the attempt does not harm the VM");

        driver.kill(&spec.run_dir, process).await.unwrap();
        driver.release(&spec.run_dir).unwrap();
        assert_nothing_left(&spec, Some(process.pid), None);
    })
    .await;
}

/// Pids of processes whose command line names `dir`.
fn pgrep_in(dir: &Path) -> Vec<u32> {
    let needle = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .filter(|&pid| pid_alive(pid))
        .collect()
}
