//! The Firecracker driver against a fake Firecracker: the API server of
//! `firecracker_openapi` (which validates every request against
//! Firecracker's API description), in-process for `configure`, and as a
//! separate process for `start`/`stop`. The fake process is this test
//! binary itself, run through a script by the `fake_firecracker` test.
//! Starting under the jailer is in `firecracker_driver/jailer.rs`.

mod firecracker_openapi;
#[path = "firecracker_driver/jailer.rs"]
mod jailer;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use banger_vmm::firecracker::{requests, ApiRequest, Firecracker};
use banger_vmm::{DiskSpec, VmSpec, VmmError, VmmProcess};
use firecracker_openapi::{serve, Behaviour, OpenApi, Received};

/// The whole of a test that spawns a (fake) VMM process.
const FAKE_VMM_TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Scripts standing in for the firecracker binary. Written once, before
/// any test spawns a process, so no forked child holds them open for
/// writing when they are executed (ETXTBSY).
struct Fakes {
    /// Runs `fake_firecracker` below.
    firecracker: PathBuf,
    /// Prints an error and exits 1, as Firecracker does on a bad argument.
    exits_early: PathBuf,
    /// Runs `jailer::fake_jailer`.
    jailer: PathBuf,
}

fn fakes() -> &'static Fakes {
    static FAKES: OnceLock<Fakes> = OnceLock::new();
    FAKES.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Per test process, so a concurrent run never rewrites a script
        // being executed; those of finished runs are removed.
        for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("firecracker-fakes-").and_then(|p| p.parse().ok());
            if pid.is_some_and(|pid| !pid_alive(pid)) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tmp.join(format!("firecracker-fakes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = std::env::current_exe().unwrap();
        let firecracker = dir.join("firecracker");
        let script = format!(
            "#!/bin/sh\nFAKE_FC_ARGS=\"$(printf '%s\\n' \"$@\")\"\nexport FAKE_FC_ARGS\n\
             exec '{}' fake_firecracker --exact --ignored --nocapture --test-threads=1\n",
            exe.display()
        );
        write_script(&firecracker, &script);
        let exits_early = dir.join("firecracker-bad");
        write_script(&exits_early, "#!/bin/sh\necho 'Error: unknown argument --frobnicate' >&2\nexit 1\n");
        let jailer = dir.join("jailer");
        let script = format!(
            "#!/bin/sh\nFAKE_JAILER_ARGS=\"$(printf '%s\\n' \"$@\")\"\nexport FAKE_JAILER_ARGS\n\
             exec '{}' jailer::fake_jailer --exact --ignored --nocapture --test-threads=1\n",
            exe.display()
        );
        write_script(&jailer, &script);
        Fakes { firecracker, exits_early, jailer }
    })
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The fake Firecracker process: serves the validating API on the
/// `--api-sock` it is given, records requests to `requests.jsonl` beside
/// the socket, and reads its [`Behaviour`] from `fake.json` there. Run by
/// the fake jailer, it sees its paths under the jail root in
/// `FAKE_FC_CHROOT` (its working directory) and keeps those files in the
/// run directory `FAKE_FC_RUN_DIR` instead. Does nothing when run as an
/// ordinary test.
#[test]
#[ignore = "the fake firecracker process, started by the other tests"]
fn fake_firecracker() {
    let Ok(args) = std::env::var("FAKE_FC_ARGS") else {
        return;
    };
    let args: Vec<&str> = args.lines().collect();
    let value = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1].to_string());
    let chroot = std::env::var_os("FAKE_FC_CHROOT").map(PathBuf::from);
    if let Some(root) = &chroot {
        assert_eq!(&std::env::current_dir().unwrap(), root, "the jailer leaves firecracker in the jail root");
    }
    let in_jail = Behaviour { chroot, ..Behaviour::default() };
    let api_sock = in_jail.resolve(&value("--api-sock").expect("--api-sock"));
    let run_dir = match std::env::var_os("FAKE_FC_RUN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => api_sock.parent().unwrap().to_path_buf(),
    };
    std::fs::write(run_dir.join("fake.args"), args.join("\n")).unwrap();
    std::fs::write(run_dir.join("fake.pid"), std::process::id().to_string()).unwrap();
    let behaviour: Behaviour =
        std::fs::read(run_dir.join("fake.json")).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or_default();
    let behaviour = Behaviour { chroot: in_jail.chroot, ..behaviour };
    println!("fake firecracker console");
    let log = run_dir.join("requests.jsonl");
    let record = Arc::new(move |received: Received| {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        writeln!(file, "{}", serde_json::to_string(&received).unwrap()).unwrap();
    });
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // Never outlive a test run that forgot to stop it.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            std::process::exit(3);
        });
        let listener = tokio::net::UnixListener::bind(&api_sock).expect("bind the API socket");
        serve(listener, Arc::new(OpenApi::load()), behaviour, record).await;
    });
}

/// A VM in a fresh run directory, with an ELF "kernel", an initrd and two
/// disks.
fn vm(dir: &Path) -> VmSpec {
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF\x02\x01\x01\0not really a kernel").unwrap();
    for file in ["initrd.img", "root.ext4", "seed.ext4"] {
        std::fs::write(dir.join(file), format!("contents of {file}")).unwrap();
    }
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    VmSpec {
        name: "fake_vm".into(),
        run_dir,
        kernel,
        initrd: Some(dir.join("initrd.img")),
        cmdline: "root=/dev/vda".into(),
        cpus: 2,
        memory_mib: 512,
        disks: vec![
            DiskSpec { path: dir.join("root.ext4"), read_only: false },
            DiskSpec { path: dir.join("seed.ext4"), read_only: true },
        ],
        nics: Vec::new(),
    }
}

fn with_behaviour(spec: &VmSpec, behaviour: &Behaviour) {
    std::fs::write(spec.run_dir.join("fake.json"), serde_json::to_vec(behaviour).unwrap()).unwrap();
}

fn received(run_dir: &Path) -> Vec<Received> {
    let text = std::fs::read_to_string(run_dir.join("requests.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn expected(spec: &VmSpec) -> Vec<Received> {
    let to_received = |r: &ApiRequest| Received { method: r.method().into(), path: r.path(), body: r.body() };
    requests(spec).unwrap().iter().map(to_received).collect()
}

/// Whether a process with this pid exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
}

fn assert_nothing_left(run_dir: &Path, pid: u32) {
    assert!(!pid_alive(pid), "firecracker (pid {pid}) still runs");
    // symlink_metadata: a dangling symlink to a socket in the jail counts.
    for file in ["firecracker.sock", "vsock.sock", "vmm.pid", "jail"] {
        assert!(run_dir.join(file).symlink_metadata().is_err(), "{file} is left behind");
    }
}

/// Runs the in-process validating API server on a socket in `dir`.
fn in_process_api(dir: &Path, behaviour: Behaviour) -> (PathBuf, Arc<Mutex<Vec<Received>>>) {
    let api_sock = dir.join("api.sock");
    let listener = tokio::net::UnixListener::bind(&api_sock).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let record = Arc::new(move |r: Received| sink.lock().unwrap().push(r));
    tokio::spawn(serve(listener, Arc::new(OpenApi::load()), behaviour, record));
    (api_sock, log)
}

#[tokio::test]
async fn configure_sends_valid_requests_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let (api_sock, log) = in_process_api(dir.path(), Behaviour::default());
    Firecracker::new("firecracker").configure(&api_sock, &spec).await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log, expected(&spec));
    assert_eq!(log.last().unwrap().body["action_type"], "InstanceStart");
    assert!(spec.run_dir.join("firecracker.log").is_file(), "the logger needs its file to exist");
    assert!(spec.run_dir.join("metrics.json").is_file(), "the metrics need their file to exist");
}

#[tokio::test]
async fn configure_stops_at_a_refused_request_with_its_fault_message() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let behaviour = Behaviour { fail_path: Some("/drives/disk1".into()), ..Behaviour::default() };
    let (api_sock, log) = in_process_api(dir.path(), behaviour);
    let error = Firecracker::new("firecracker").configure(&api_sock, &spec).await.unwrap_err();
    let VmmError::Api { request, reason } = &error else { panic!("not an API error: {error}") };
    assert_eq!(request, "PUT /drives/disk1");
    assert!(reason.contains("400") && reason.contains("injected failure on /drives/disk1"), "{reason}");
    let last = log.lock().unwrap().last().unwrap().path.clone();
    assert_eq!(last, "/drives/disk1", "nothing may be sent after a refused request");
}

#[tokio::test]
async fn start_boots_and_stop_shuts_down_gracefully() {
    banger_testkit::with_timeout(FAKE_VMM_TEST_TIMEOUT, start_boots_and_stop_shuts_down_gracefully_body()).await;
}

async fn start_boots_and_stop_shuts_down_gracefully_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    with_behaviour(&spec, &Behaviour { exit_on_ctrl_alt_del: true, ..Behaviour::default() });
    // A stale socket from an earlier run would make the bind fail.
    std::fs::write(spec.run_dir.join("firecracker.sock"), b"stale").unwrap();
    let driver = Firecracker::new(&fakes().firecracker);

    let process = driver.start(&spec).await.unwrap();
    let pid = process.pid;
    assert!(process.is_running());
    assert_eq!(VmmProcess::recorded_in(&spec.run_dir), Some(process));
    let args = std::fs::read_to_string(spec.run_dir.join("fake.args")).unwrap();
    let api_sock = spec.run_dir.join("firecracker.sock");
    let log = spec.run_dir.join("firecracker.log");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "--api-sock",
            api_sock.to_str().unwrap(),
            "--log-path",
            log.to_str().unwrap(),
            "--level",
            "Info",
            "--show-level",
            "--id",
            "fake-vm"
        ]
    );
    assert_eq!(received(&spec.run_dir), expected(&spec));
    assert!(spec.run_dir.join("vsock.sock").exists(), "the fake binds the vsock socket like Firecracker");
    let console = std::fs::read_to_string(spec.run_dir.join("console.log")).unwrap();
    assert!(console.contains("fake firecracker console"), "stdout is the console: {console:?}");
    assert_ne!(current_sid(), sid(pid), "firecracker must run in its own session");

    let started = Instant::now();
    driver.stop(&spec.run_dir, process, Duration::from_secs(20)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "a guest that shuts down is not waited for");
    driver.release(&spec.run_dir).unwrap();
    assert_eq!(received(&spec.run_dir).last().unwrap().body["action_type"], "SendCtrlAltDel");
    assert_nothing_left(&spec.run_dir, pid);
}

#[tokio::test]
async fn stop_kills_a_guest_that_ignores_ctrl_alt_del() {
    banger_testkit::with_timeout(FAKE_VMM_TEST_TIMEOUT, stop_kills_a_guest_that_ignores_ctrl_alt_del_body()).await;
}

async fn stop_kills_a_guest_that_ignores_ctrl_alt_del_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let driver = Firecracker::new(&fakes().firecracker);
    let process = driver.start(&spec).await.unwrap();

    let started = Instant::now();
    driver.stop(&spec.run_dir, process, Duration::from_millis(500)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500), "stop must wait for the guest first");
    assert_eq!(received(&spec.run_dir).last().unwrap().body["action_type"], "SendCtrlAltDel");
    driver.release(&spec.run_dir).unwrap();
    assert_nothing_left(&spec.run_dir, process.pid);
    // Stopping a stopped VM is fine.
    driver.stop(&spec.run_dir, process, Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn start_kills_firecracker_when_the_api_refuses_a_request() {
    banger_testkit::with_timeout(FAKE_VMM_TEST_TIMEOUT, start_kills_firecracker_when_the_api_refuses_a_request_body())
        .await;
}

async fn start_kills_firecracker_when_the_api_refuses_a_request_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    with_behaviour(&spec, &Behaviour { fail_path: Some("/boot-source".into()), ..Behaviour::default() });
    let error = Firecracker::new(&fakes().firecracker).start(&spec).await.unwrap_err();
    let VmmError::Api { request, reason } = &error else { panic!("not an API error: {error}") };
    assert_eq!(request, "PUT /boot-source");
    assert!(reason.contains("injected failure"), "{reason}");
    let paths: Vec<String> = received(&spec.run_dir).into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/metrics", "/machine-config", "/boot-source"]);
    let pid: u32 = std::fs::read_to_string(spec.run_dir.join("fake.pid")).unwrap().parse().unwrap();
    assert_nothing_left(&spec.run_dir, pid);
}

#[tokio::test]
async fn start_reports_an_early_exit_with_the_log_tail() {
    banger_testkit::with_timeout(FAKE_VMM_TEST_TIMEOUT, start_reports_an_early_exit_with_the_log_tail_body()).await;
}

async fn start_reports_an_early_exit_with_the_log_tail_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let error = Firecracker::new(&fakes().exits_early).start(&spec).await.unwrap_err();
    let VmmError::ExitedEarly { log_tail } = &error else { panic!("not an early exit: {error}") };
    assert!(log_tail.contains("unknown argument --frobnicate"), "{log_tail}");
    assert!(log_tail.contains("exit status: 1"), "{log_tail}");
    assert!(!spec.run_dir.join("vmm.pid").exists());
}

#[tokio::test]
async fn start_refuses_a_kernel_that_is_not_elf() {
    banger_testkit::with_timeout(FAKE_VMM_TEST_TIMEOUT, start_refuses_a_kernel_that_is_not_elf_body()).await;
}

async fn start_refuses_a_kernel_that_is_not_elf_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let mut bz_image = vec![0u8; 0x400];
    bz_image[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(&spec.kernel, bz_image).unwrap();
    let error = Firecracker::new(&fakes().firecracker).start(&spec).await.unwrap_err();
    assert!(matches!(&error, VmmError::InvalidSpec(m) if m.contains("bzImage")), "{error}");
    assert!(!spec.run_dir.join("fake.pid").exists(), "nothing may be spawned");
}

#[tokio::test]
async fn start_reports_a_missing_binary() {
    banger_testkit::with_timeout(FAKE_VMM_TEST_TIMEOUT, start_reports_a_missing_binary_body()).await;
}

async fn start_reports_a_missing_binary_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let error = Firecracker::new(dir.path().join("no-firecracker")).start(&spec).await.unwrap_err();
    assert!(matches!(error, VmmError::MissingBinary { .. }), "{error}");
}

fn sid(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name: state, ppid, pgrp, session.
    stat.rsplit_once(')').unwrap().1.split_whitespace().nth(3).unwrap().to_string()
}

fn current_sid() -> String {
    sid(std::process::id())
}
