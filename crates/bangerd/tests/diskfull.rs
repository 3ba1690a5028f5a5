//! A full state filesystem, on a small loop-mounted ext4: what frees space
//! (stop, kill, rm --force, image rm --force, kernel rm) still works and
//! records what it did; a daemon killed on a full disk starts again and
//! stops cleanly; `banger doctor` says when space is low and the reserve
//! is gone. VMs run on the test driver (the real agent as a host process).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_api::{
    CheckStatus, ErrorCode, KernelImportRequest, Operation, OperationState, Vm, VmCreateRequest, VmState,
};
use banger_client::Client;
use banger_testkit::loopfs::LoopFs;
use banger_testkit::requests::{finished, succeed, tiny_image, vm};
use banger_testkit::{DaemonProcess, TestDaemon};
use banger_vmm::local::{Local, LocalFaults};

/// Every test here ends within this, whatever the daemon does.
const TEST_TIMEOUT: Duration = Duration::from_secs(240);

fn vm_of(result: Option<banger_api::OperationResult>) -> Vm {
    result.and_then(banger_api::OperationResult::into_vm).expect("the result is a VM")
}

/// A fake vmlinux of about 1 MiB (`kernel import` takes it; nothing boots
/// it) in `dir`, named for `name`.
fn fake_vmlinux(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("vmlinux-{name}"));
    std::fs::write(&path, banger_testkit::bundles::fake_vmlinux(&name.repeat((1 << 20) / name.len()))).unwrap();
    path
}

async fn import_kernel(client: &Client, name: &str, sources: &Path) {
    let vmlinux = fake_vmlinux(sources, name);
    let import = KernelImportRequest {
        name: name.into(),
        path: vmlinux.display().to_string(),
        kind: None,
        modules_dir: None,
        force: false,
    };
    succeed(client, client.import_kernel(&import).await.unwrap()).await;
}

async fn build_tiny(client: &Client, name: &str, kernel: &str) {
    succeed(client, client.build_image(&tiny_image(name, kernel)).await.unwrap()).await;
}

fn vm_request(name: &str) -> VmCreateRequest {
    vm(name, "tiny")
}

/// Waits until `cond` holds, checking every 100 ms, for at most `within`.
async fn eventually(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn agent() -> PathBuf {
    tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap()
}

/// Runs `op`, which must succeed, and says how long it took.
async fn timed(client: &Client, what: &str, op: Operation) -> Option<banger_api::OperationResult> {
    let started = Instant::now();
    let result = succeed(client, op).await;
    eprintln!("full disk: {what} took {:?}", started.elapsed());
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_kill_and_removals_work_on_a_full_state_filesystem() {
    let Some(fs) = LoopFs::mount("ext4", 256) else { return };
    let agent = agent().await;
    banger_testkit::with_timeout(TEST_TIMEOUT, async move {
        let state_dir = fs.path().join("state");
        let daemon = TestDaemon::start_with(|c| {
            c.state_dir = state_dir.clone();
            c.agent_binary = Some(agent.clone());
            c.test_driver = Some(Local { agent: agent.clone(), faults: LocalFaults::default() });
            c.boot_timeout = Duration::from_secs(10);
        })
        .await;
        let client = daemon.client.clone();
        import_kernel(&client, "k", daemon.root.path()).await;
        import_kernel(&client, "k2", daemon.root.path()).await;
        build_tiny(&client, "tiny", "k").await;
        for name in ["a", "b", "c"] {
            let vm = vm_of(succeed(&client, client.create_vm(&vm_request(name)).await.unwrap()).await);
            assert_eq!(vm.state, VmState::Running);
        }
        let reserve = state_dir.join("space.reserve");
        eventually(Duration::from_secs(15), "the space reserve", || reserve.is_file()).await;
        let doctor = client.doctor().await.unwrap();
        let check = |name: &str| doctor.checks.iter().find(|c| c.name == name).cloned().expect(name);
        assert_eq!(check("space_reserve").status, CheckStatus::Pass, "{:?}", check("space_reserve"));

        let filler = fs.fill("filler");
        eprintln!("full disk: {} bytes free after filling", fs.free_bytes());

        let stopped = vm_of(timed(&client, "vm stop", client.stop_vm("a", false).await.unwrap()).await);
        assert_eq!(stopped.state, VmState::Stopped);
        assert!(!reserve.exists(), "the first write that found no space gave up the reserve");
        let killed = vm_of(timed(&client, "vm kill", client.stop_vm("b", true).await.unwrap()).await);
        assert_eq!((killed.state, killed.pid), (VmState::Stopped, None), "the kill's record says stopped");
        timed(&client, "vm rm --force", client.remove_vm("c", true).await.unwrap()).await;
        assert!(!state_dir.join("vms/c").exists(), "c's disks are gone");
        let started = Instant::now();
        client.remove_image("tiny", true).await.expect("image rm --force works on a full disk");
        eprintln!("full disk: image rm --force took {:?}", started.elapsed());
        let started = Instant::now();
        client.remove_kernel("k2", false).await.expect("kernel rm works on a full disk");
        eprintln!("full disk: kernel rm took {:?}", started.elapsed());

        let vms: Vec<(String, VmState)> = client.vms().await.unwrap().into_iter().map(|v| (v.name, v.state)).collect();
        assert_eq!(vms, [("a".to_owned(), VmState::Stopped), ("b".to_owned(), VmState::Stopped)]);
        assert!(client.images().await.unwrap().is_empty());
        let kernels: Vec<String> = client.kernels().await.unwrap().into_iter().map(|k| k.name).collect();
        assert_eq!(kernels, ["k"]);

        // Full again, with no reserve left: a write fails with its own code
        // and names the filesystem.
        let second = fs.fill("filler2");
        let doctor = client.doctor().await.unwrap();
        let check = |name: &str| doctor.checks.iter().find(|c| c.name == name).cloned().expect(name);
        assert_eq!(check("space_reserve").status, CheckStatus::Warn, "{:?}", check("space_reserve"));
        assert_ne!(check("disk").status, CheckStatus::Pass, "{:?}", check("disk"));
        let import = KernelImportRequest {
            name: "k3".into(),
            path: fake_vmlinux(daemon.root.path(), "k3").display().to_string(),
            kind: None,
            modules_dir: None,
            force: false,
        };
        let done = finished(&client, client.import_kernel(&import).await.unwrap()).await;
        assert_eq!(done.state, OperationState::Failed);
        let api = done.error.expect("a failed import says why");
        assert_eq!(api.code, ErrorCode::NoSpace, "{api:?}");
        let mount = fs.path().canonicalize().unwrap();
        assert!(api.message.contains(&format!("filesystem mounted at {}", mount.display())), "{api:?}");
        assert!(client.kernel("k3").await.is_err(), "nothing of the failed import remains");

        std::fs::remove_file(filler).unwrap();
        std::fs::remove_file(second).unwrap();
        eventually(Duration::from_secs(15), "the reserve made again once space returned", || reserve.is_file()).await;
        succeed(&client, client.remove_vm("a", false).await.unwrap()).await;
        succeed(&client, client.remove_vm("b", false).await.unwrap()).await;
        drop(daemon);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_on_a_full_disk_starts_again_and_stops_cleanly() {
    let Some(fs) = LoopFs::mount("ext4", 128) else { return };
    let agent = agent().await;
    banger_testkit::with_timeout(TEST_TIMEOUT, async move {
        let state_dir = fs.path().join("state");
        let config = format!("[vms]\nagent_binary = {:?}\n", agent.display().to_string());
        let mut daemon =
            DaemonProcess::start_with_state(Path::new(env!("CARGO_BIN_EXE_bangerd")), Some(&state_dir), &config).await;
        let client = daemon.client.clone();
        import_kernel(&client, "k", daemon.root.path()).await;
        build_tiny(&client, "tiny", "k").await;
        let status = daemon.kill();
        assert!(!status.success());

        // What a daemon from before this one left: the database in WAL
        // mode with its shared-memory index, as a crash leaves them.
        let db = state_dir.join("banger.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        conn.execute("INSERT INTO operations (id, body, created_at) VALUES ('op-x', '{}', '2026-01-01T00:00:00Z')", [])
            .unwrap();
        let saved: Vec<(PathBuf, Vec<u8>)> = ["banger.db", "banger.db-wal", "banger.db-shm"]
            .iter()
            .map(|f| (state_dir.join(f), std::fs::read(state_dir.join(f)).expect(f)))
            .collect();
        drop(conn);
        for (path, bytes) in saved {
            std::fs::write(path, bytes).unwrap();
        }

        fs.fill("filler");
        let started = Instant::now();
        daemon.restart().await;
        eprintln!("full disk: restart after SIGKILL answered in {:?}", started.elapsed());
        assert_eq!(client.images().await.unwrap().len(), 1, "its state is all there");
        client.remove_image("tiny", false).await.expect("image rm works after the restart");
        client.remove_kernel("k", false).await.expect("kernel rm works after the restart");

        let status = daemon.terminate();
        assert_eq!(status.code(), Some(0), "SIGTERM on a full disk exits 0; its log:\n{}", daemon.log());
        let started = Instant::now();
        daemon.restart().await;
        eprintln!("full disk: restart after SIGTERM answered in {:?}", started.elapsed());
        assert!(client.kernels().await.unwrap().is_empty());
        assert_eq!(daemon.terminate().code(), Some(0));
        let log = daemon.log();
        assert!(!log.contains("panicked"), "{log}");
    })
    .await;
}

/// The whole of the real-guest test, the kernel's first import included.
const GUEST_TEST_TIMEOUT: Duration = Duration::from_secs(600);

/// A real guest under QEMU whose work disk is on the full state
/// filesystem: its write fails, QEMU pauses it (`io-error`), `vm show`
/// says so, exec is refused at once, and stop ends it.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_paused_on_a_full_disk_shows_paused_refuses_exec_and_stops() {
    if !banger_testkit::require(
        "qemu-system-x86_64, to boot a guest",
        banger_host::find_tool("qemu-system-x86_64").is_some(),
    ) {
        return;
    }
    let Some(fs) = LoopFs::mount("ext4", 384) else { return };
    banger_testkit::with_timeout(GUEST_TEST_TIMEOUT, async move {
        let Some(kernel) = banger_testkit::debian_kernel().await else { return };
        let agent = agent().await;
        let state_dir = fs.path().join("state");
        let daemon = TestDaemon::start_with_kernel(&kernel, |c| {
            c.state_dir = state_dir.clone();
            c.agent_binary = Some(agent.clone());
            c.vmm = Some(banger_api::VmmChoice::Qemu);
            c.boot_timeout = Duration::from_secs(120);
        })
        .await;
        let client = daemon.client.clone();
        build_tiny(&client, "tiny", banger_testkit::shared_kernel::NAME).await;
        let request = VmCreateRequest { memory_mib: Some(256), work_disk_bytes: Some(1 << 30), ..vm_request("g") };
        let vm = vm_of(succeed(&client, client.create_vm(&request).await.unwrap()).await);
        assert_eq!(vm.state, VmState::Running);

        fs.fill("filler");
        // The guest writes to its work disk, whose file has no space to
        // grow: the exec hangs with the guest, so it runs on its own.
        let writer = {
            let client = client.clone();
            tokio::spawn(async move {
                client.exec("g", &["dd", "if=/dev/zero", "of=/work/fill", "bs=1M", "count=64", "conv=fsync"], b"").await
            })
        };
        let started = Instant::now();
        let paused = banger_testkit::wait_vm(&client, "g", Duration::from_secs(60), "was paused", |vm| {
            vm.state == VmState::Paused
        })
        .await;
        eprintln!("full disk: the pause showed {:?} after the guest began writing", started.elapsed());
        assert_eq!(paused.pause_reason.as_deref(), Some("io-error"), "{paused:?}");
        assert!(paused.pid.is_some(), "its VMM still runs");

        let started = Instant::now();
        let refused = client.exec("g", &["true"], b"").await.expect_err("exec in a paused guest is refused");
        let refusal = started.elapsed();
        eprintln!("full disk: exec refused in {refusal:?}: {refused}");
        assert_eq!(refused.api().map(|e| e.code), Some(ErrorCode::Conflict), "{refused}");
        assert!(refused.to_string().contains("paused"), "{refused}");
        assert!(refusal < Duration::from_secs(2), "refused at once, not after {refusal:?}");

        let stopped =
            vm_of(timed(&client, "vm stop of the paused guest", client.stop_vm("g", false).await.unwrap()).await);
        assert_eq!((stopped.state, stopped.pid, stopped.pause_reason), (VmState::Stopped, None, None));
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
        succeed(&client, client.remove_vm("g", false).await.unwrap()).await;
        drop(daemon);
    })
    .await;
}
