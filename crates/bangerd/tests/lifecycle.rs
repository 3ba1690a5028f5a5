//! The VM lifecycle against the test driver: no guest, the real static
//! agent runs as a host process, so every path (a boot that never answers,
//! one cut short, rollback after each create step, the supervisor,
//! adoption, keepalives) runs in milliseconds. After each path the test
//! checks what a user would find: the VM's state, its ledger, its files
//! and whether its process still runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_api::{
    AgentStatus, ErrorCode, ImageBuildRequest, ImageRecipe, KernelImportRequest, Operation, OperationState, Vm,
    VmCreateRequest, VmState,
};
use banger_client::Client;
use banger_testkit::TestDaemon;
use banger_vmm::local::{BootFault, Local, LocalFaults};
use banger_vmm::VmmProcess;
use bangerd::vm::create::CreateStep;

/// Every test here ends within this, whatever the daemon does.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// A daemon whose VMs run on the test driver, with a kernel (the testkit's
/// fake vmlinux: nothing boots it) and the tiny image.
struct Harness {
    daemon: TestDaemon,
    client: Client,
    faults: LocalFaults,
}

async fn harness(agent: &Path, adjust: impl FnOnce(&mut bangerd::Config)) -> Harness {
    let agent = agent.to_owned();
    let faults = LocalFaults::default();
    let daemon = TestDaemon::start_with(|c| {
        c.agent_binary = Some(agent.clone());
        c.test_driver = Some(Local { agent: agent.clone(), faults: faults.clone() });
        c.boot_timeout = Duration::from_secs(3);
        adjust(c);
    })
    .await;
    let client = daemon.client.clone();
    let vmlinux = daemon.root.path().join("vmlinux");
    std::fs::write(&vmlinux, banger_testkit::bundles::fake_vmlinux("lifecycle")).unwrap();
    let import = KernelImportRequest {
        name: "k".into(),
        path: vmlinux.display().to_string(),
        kind: None,
        modules_dir: None,
        force: false,
    };
    succeed(&client, client.import_kernel(&import).await.unwrap()).await;
    let build = ImageBuildRequest {
        name: "tiny".into(),
        recipe: Some(ImageRecipe::Tiny),
        from_dir: None,
        from_tar: None,
        kernel: "k".into(),
        size_bytes: None,
        force: false,
    };
    succeed(&client, client.build_image(&build).await.unwrap()).await;
    Harness { daemon, client, faults }
}

fn request(name: &str) -> VmCreateRequest {
    VmCreateRequest {
        name: name.into(),
        image: "tiny".into(),
        kernel: None,
        cpus: None,
        memory_mib: Some(128),
        disk_size_bytes: None,
        work_disk_bytes: Some(1 << 20),
        vmm: None,
        no_start: false,
        network: None,
    }
}

/// Waits for an operation to finish.
async fn finished(client: &Client, op: Operation) -> Operation {
    tokio::time::timeout(Duration::from_secs(60), client.wait(&op.id, |_| {}))
        .await
        .expect("the operation finishes")
        .expect("the operation can be followed")
}

async fn succeed(client: &Client, op: Operation) -> Option<banger_api::OperationResult> {
    let done = finished(client, op).await;
    assert_eq!(done.state, OperationState::Succeeded, "{:?} failed: {:?}", done.kind, done.error);
    done.result
}

async fn fail(client: &Client, op: Operation) -> banger_api::ApiError {
    let done = finished(client, op).await;
    assert_eq!(done.state, OperationState::Failed, "{:?} should have failed", done.kind);
    done.error.expect("a failed operation says why")
}

fn vm_of(result: Option<banger_api::OperationResult>) -> Vm {
    result.and_then(banger_api::OperationResult::into_vm).expect("the result is a VM")
}

impl Harness {
    async fn create(&self, name: &str) -> Vm {
        vm_of(succeed(&self.client, self.client.create_vm(&request(name)).await.unwrap()).await)
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.daemon.config.run_dir.join("vms").join(name)
    }

    fn vm_dir(&self, name: &str) -> PathBuf {
        self.daemon.config.state_dir.join("vms").join(name)
    }

    /// The kinds of the entries in a VM's ledger, oldest first.
    fn ledger(&self, name: &str) -> Vec<String> {
        let db = rusqlite::Connection::open(self.daemon.config.state_dir.join("banger.db")).unwrap();
        // The daemon's database keeps a rollback journal: a reader waits out its writes.
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt = db.prepare("SELECT body FROM vm_resources WHERE vm = ?1 ORDER BY id").unwrap();
        let bodies = stmt.query_map([name], |row| row.get::<_, String>(0)).unwrap();
        bodies
            .map(|b| {
                serde_json::from_str::<serde_json::Value>(&b.unwrap()).unwrap()["kind"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Asserts that nothing of a removed VM remains.
    fn assert_gone(&self, name: &str, process: Option<VmmProcess>) {
        assert!(!self.vm_dir(name).exists(), "{name}'s disks remain");
        assert!(!self.run_dir(name).exists(), "{name}'s run dir remains");
        assert_eq!(self.ledger(name), Vec::<String>::new(), "{name}'s ledger is not empty");
        if let Some(process) = process {
            assert!(!process.is_running(), "{name}'s VMM still runs");
        }
    }

    /// Asserts that a stopped VM holds only what outlives a boot.
    fn assert_stopped_clean(&self, name: &str, process: Option<VmmProcess>) {
        assert_eq!(self.ledger(name), ["dir", "dir", "disk", "disk"], "{name} holds only its directories and disks");
        let files = files_in(&self.run_dir(name));
        assert!(files.iter().all(|f| f == "console.log"), "{name}'s run dir keeps only its console: {files:?}");
        assert!(self.vm_dir(name).join("root.ext4").exists());
        if let Some(process) = process {
            assert!(!process.is_running(), "{name}'s VMM still runs");
        }
    }

    /// Waits for the VM's state.
    async fn wait_state(&self, name: &str, state: VmState) -> Vm {
        let what = format!("became {state:?}");
        banger_testkit::wait_vm(&self.client, name, Duration::from_secs(20), &what, |vm| vm.state == state).await
    }

    /// The process the driver started for the VM, once the daemon knows it.
    async fn wait_process(&self, name: &str) -> VmmProcess {
        let vm =
            banger_testkit::wait_vm(&self.client, name, Duration::from_secs(10), "had a VMM", |vm| vm.pid.is_some())
                .await;
        VmmProcess::of(vm.pid.unwrap()).expect("the VMM runs")
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Runs a test body under [`TEST_TIMEOUT`], handing it the static agent,
/// which is built (once per run, which may take a while) before the clock starts.
async fn within<F, Fut>(test: F)
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    tokio::time::timeout(TEST_TIMEOUT, test(agent)).await.expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_exec_stop_start_kill_rm_release_everything() {
    within(|agent| async move {
        let h = harness(&agent, |_| {}).await;
        let vm = h.create("a").await;
        assert_eq!(vm.state, VmState::Running);
        assert_eq!(vm.agent, Some(AgentStatus::Answering));
        let pid = vm.pid.expect("a running VM has a pid");
        let process = VmmProcess::of(pid).unwrap();
        assert_eq!(h.ledger("a"), ["dir", "dir", "disk", "disk", "vmm"]);
        let echo = h.client.exec("a", &["echo", "hi"], b"").await.unwrap();
        assert_eq!((echo.stdout.as_slice(), echo.code), (&b"hi\n"[..], Some(0)));

        let stopped = vm_of(succeed(&h.client, h.client.stop_vm("a", false).await.unwrap()).await);
        assert_eq!((stopped.state, stopped.pid, stopped.agent), (VmState::Stopped, None, None));
        h.assert_stopped_clean("a", Some(process));

        let started = vm_of(succeed(&h.client, h.client.start_vm("a", false).await.unwrap()).await);
        assert_eq!(started.state, VmState::Running);
        let second = VmmProcess::of(started.pid.unwrap()).unwrap();
        let restarted = vm_of(succeed(&h.client, h.client.start_vm("a", true).await.unwrap()).await);
        assert_ne!(restarted.pid, started.pid, "restart boots a new VMM");
        assert!(!second.is_running());
        let third = VmmProcess::of(restarted.pid.unwrap()).unwrap();

        let killed = vm_of(succeed(&h.client, h.client.stop_vm("a", true).await.unwrap()).await);
        assert_eq!(killed.state, VmState::Stopped);
        h.assert_stopped_clean("a", Some(third));
        // Stopping what is stopped is no error.
        succeed(&h.client, h.client.stop_vm("a", false).await.unwrap()).await;

        let refused = h.client.exec("a", &["true"], b"").await.unwrap_err();
        assert_eq!(refused.api().map(|e| e.code), Some(ErrorCode::Conflict), "{refused}");
        succeed(&h.client, h.client.remove_vm("a", false).await.unwrap()).await;
        h.assert_gone("a", None);
        assert_eq!(h.client.vms().await.unwrap(), Vec::<Vm>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_never_answers_fails_at_the_boot_timeout_and_leaves_nothing() {
    within(|agent| async move {
        let h = harness(&agent, |c| c.boot_timeout = Duration::from_secs(2)).await;
        for (name, fault) in [("never", BootFault::NeverListens), ("silent", BootFault::SilentListener)] {
            h.faults.set(name, fault);
            let began = Instant::now();
            let op = h.client.create_vm(&request(name)).await.unwrap();
            let process = h.wait_process(name).await;
            let error = fail(&h.client, op).await;
            let took = began.elapsed();
            assert!(took < Duration::from_secs(6), "{name}: the 2 s boot timeout fired after {took:?}");
            assert_eq!(error.code, ErrorCode::BootFailed, "{name}: {error}");
            assert!(error.message.contains("never answered within 2s"), "{name}: {error}");
            assert!(error.message.contains("console"), "{name}: the error shows the console: {error}");
            h.assert_gone(name, Some(process));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_dies_at_boot_fails_at_once_with_its_console() {
    within(|agent| async move {
        let h = harness(&agent, |c| c.boot_timeout = Duration::from_secs(60)).await;
        h.faults.set("dies", BootFault::DiesAtBoot);
        let began = Instant::now();
        let error = fail(&h.client, h.client.create_vm(&request("dies")).await.unwrap()).await;
        assert!(began.elapsed() < Duration::from_secs(5), "took {:?}", began.elapsed());
        assert_eq!(error.code, ErrorCode::BootFailed);
        assert!(error.message.contains(banger_vmm::local::DIES_AT_BOOT_LINE), "{error}");
        h.assert_gone("dies", None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_of_an_older_protocol_gets_a_clear_error_and_the_create_rolls_back() {
    within(|agent| async move {
        let h = harness(&agent, |c| c.boot_timeout = Duration::from_secs(60)).await;
        // The real agent, told to speak version 1 only: what a VM started by
        // an older banger would run.
        h.faults.set("old", BootFault::SpeaksVersion1);
        let began = Instant::now();
        let error = fail(&h.client, h.client.create_vm(&request("old")).await.unwrap()).await;
        assert!(began.elapsed() < Duration::from_secs(10), "took {:?}", began.elapsed());
        assert_eq!(error.code, ErrorCode::Unsupported, "{error}");
        assert!(error.message.contains("restart the VM"), "{error}");
        assert!(error.message.contains("speaks 1"), "the agent's version is named: {error}");
        h.assert_gone("old", None);
        // The same name boots with an agent of this banger's version.
        h.faults.clear("old");
        let vm = succeed(&h.client, h.client.create_vm(&request("old")).await.unwrap()).await;
        assert_eq!(vm.and_then(|r| r.into_vm()).map(|v| v.state), Some(VmState::Running));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_stop_and_forced_rm_cut_a_hung_boot_short() {
    within(|agent| async move {
        // A boot timeout far beyond the test's: only preemption ends these boots.
        let h = harness(&agent, |c| c.boot_timeout = Duration::from_secs(600)).await;
        for (name, how) in [("k1", "kill"), ("s1", "stop"), ("r1", "rm --force")] {
            h.faults.set(name, BootFault::NeverListens);
            let create = h.client.create_vm(&request(name)).await.unwrap();
            let process = h.wait_process(name).await;
            h.wait_state(name, VmState::Starting).await;
            let began = Instant::now();
            let op = match how {
                "kill" => h.client.stop_vm(name, true).await.unwrap(),
                "stop" => h.client.stop_vm(name, false).await.unwrap(),
                _ => h.client.remove_vm(name, true).await.unwrap(),
            };
            let result = succeed(&h.client, op).await;
            let took = began.elapsed();
            assert!(took < Duration::from_secs(3), "`vm {how}` of a hung boot took {took:?}");
            let cancelled = fail(&h.client, create).await;
            assert_eq!(cancelled.code, ErrorCode::Cancelled, "{cancelled}");
            assert!(cancelled.message.contains(&format!("vm {how}")), "{cancelled}");
            assert!(!process.is_running(), "`vm {how}` left the VMM running");
            if how == "rm --force" {
                h.assert_gone(name, Some(process));
            } else {
                assert_eq!(vm_of(result).state, VmState::Stopped);
                h.assert_stopped_clean(name, Some(process));
            }
        }
        // A start that hangs gives way to a kill as well, and the VM boots again afterwards.
        h.faults.set("k1", BootFault::NeverListens);
        let start = h.client.start_vm("k1", false).await.unwrap();
        h.wait_state("k1", VmState::Starting).await;
        succeed(&h.client, h.client.stop_vm("k1", true).await.unwrap()).await;
        assert_eq!(fail(&h.client, start).await.code, ErrorCode::Cancelled);
        h.faults.clear("k1");
        let vm = vm_of(succeed(&h.client, h.client.start_vm("k1", false).await.unwrap()).await);
        assert_eq!(vm.state, VmState::Running);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_after_each_create_step_rolls_everything_back() {
    within(|agent| async move {
        let steps = [CreateStep::Record, CreateStep::Kernel, CreateStep::Disks, CreateStep::Boot];
        futures::future::join_all(steps.map(|step| {
            let agent = agent.clone();
            async move {
                let h = harness(&agent, |c| c.fail_create_after = Some(step)).await;
                let op = h.client.create_vm(&request("v")).await.unwrap();
                let error = fail(&h.client, op).await;
                assert!(error.message.contains(&format!("{step:?}")), "{step:?}: {error}");
                h.assert_gone("v", None);
                assert!(h.client.vm("v").await.is_err(), "{step:?}: the VM record remains");
                // No VMM of this daemon's remains.
                assert!(files_in(&h.daemon.config.run_dir.join("vms")).is_empty(), "{step:?}");
            }
        }))
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_supervisor_releases_a_vmm_killed_from_outside() {
    within(|agent| async move {
        let h = harness(&agent, |_| {}).await;
        let vm = h.create("a").await;
        let process = VmmProcess::of(vm.pid.unwrap()).unwrap();
        process.signal(libc::SIGKILL).unwrap();
        let stopped = h.wait_state("a", VmState::Stopped).await;
        assert_eq!(stopped.pid, None);
        h.assert_stopped_clean("a", Some(process));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_keepalive_notices_an_agent_that_stops_answering() {
    within(|agent| async move {
        let h = harness(&agent, |_| {}).await;
        let vm = h.create("a").await;
        let process = VmmProcess::of(vm.pid.unwrap()).unwrap();
        process.signal(libc::SIGSTOP).unwrap();
        let began = Instant::now();
        let mut events = h.client.events(None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while h.client.vm("a").await.unwrap().agent != Some(AgentStatus::NotAnswering) {
                events.next().await.unwrap().unwrap();
            }
        })
        .await
        .expect("a frozen agent is noticed");
        assert!(began.elapsed() < Duration::from_secs(8), "noticed after {:?}", began.elapsed());
        let asked = Instant::now();
        let refused = h.client.exec("a", &["true"], b"").await.unwrap_err();
        assert!(asked.elapsed() < Duration::from_secs(1), "exec waited {:?}", asked.elapsed());
        assert!(refused.to_string().contains("has not answered"), "{refused}");

        process.signal(libc::SIGCONT).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while h.client.vm("a").await.unwrap().agent != Some(AgentStatus::Answering) {
                events.next().await.unwrap().unwrap();
            }
        })
        .await
        .expect("an agent that answers again is seen");
        let echo = h.client.exec("a", &["echo", "back"], b"").await.unwrap();
        assert_eq!(echo.stdout, b"back\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_daemon_adopts_running_vms_and_releases_dead_ones() {
    within(|agent| async move {
        let mut h = harness(&agent, |_| {}).await;
        let alive = h.create("alive").await;
        let dead = h.create("dead").await;
        let (alive_process, dead_process) =
            (VmmProcess::of(alive.pid.unwrap()).unwrap(), VmmProcess::of(dead.pid.unwrap()).unwrap());
        h.daemon.stop().await;
        assert!(alive_process.is_running(), "VMs outlive the daemon");
        dead_process.signal(libc::SIGKILL).unwrap();
        dead_process.exited().await;

        h.daemon.restart().await;
        let adopted = h.client.vm("alive").await.unwrap();
        assert_eq!((adopted.state, adopted.pid), (VmState::Running, Some(alive_process.pid)));
        let echo = h.client.exec("alive", &["echo", "adopted"], b"").await.unwrap();
        assert_eq!(echo.stdout, b"adopted\n");
        assert_eq!(h.client.vm("dead").await.unwrap().state, VmState::Stopped);
        h.assert_stopped_clean("dead", Some(dead_process));

        // The adopted VM is supervised again.
        alive_process.signal(libc::SIGKILL).unwrap();
        h.wait_state("alive", VmState::Stopped).await;
        h.assert_stopped_clean("alive", Some(alive_process));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_cut_short_by_the_daemon_stopping_is_rolled_back_before_it_exits() {
    within(|agent| async move {
        let mut h = harness(&agent, |c| c.boot_timeout = Duration::from_secs(600)).await;
        h.faults.set("half", BootFault::NeverListens);
        let create = h.client.create_vm(&request("half")).await.unwrap();
        let process = h.wait_process("half").await;
        h.wait_state("half", VmState::Starting).await;
        let stopping = Instant::now();
        h.daemon.stop().await;
        eprintln!("the daemon stopped {:.0?} after it was asked, its create undone", stopping.elapsed());
        // Before any new daemon starts: nothing of the VM is left.
        h.assert_gone("half", Some(process));
        h.daemon.restart().await;
        assert!(h.client.vm("half").await.is_err(), "the half-made VM is removed");
        let op = h.client.operation(&create.id).await.unwrap();
        assert_eq!(op.state, OperationState::Failed);
        let error = op.error.expect("the create says why it failed");
        assert_eq!(error.code, ErrorCode::Cancelled, "{error}");
        assert!(error.message.contains("shutting down"), "{error}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pid_that_another_process_now_has_is_neither_adopted_nor_signalled() {
    within(|agent| async move {
        let mut h = harness(&agent, |_| {}).await;
        let vm = h.create("a").await;
        let process = VmmProcess::of(vm.pid.unwrap()).unwrap();
        h.daemon.stop().await;
        process.signal(libc::SIGKILL).unwrap();
        process.exited().await;
        // Another process now has a pid the records name: the VM's pid in
        // the ledger and in the driver's pid file is pointed at it, with the
        // dead VMM's start time, as a reused pid would look.
        let mut stranger = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let forged = VmmProcess { pid: stranger.id(), start_time: process.start_time };
        let db = rusqlite::Connection::open(h.daemon.config.state_dir.join("banger.db")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let entry = serde_json::json!({"kind": "vmm", "run_dir": h.run_dir("a"), "process": forged}).to_string();
        db.execute("UPDATE vm_resources SET body = ?1 WHERE vm = 'a' AND body LIKE '%\"vmm\"%'", [entry]).unwrap();
        drop(db);
        for file in files_in(&h.run_dir("a")).iter().filter(|f| f.ends_with(".pid")) {
            std::fs::write(h.run_dir("a").join(file), format!("{} {}\n", forged.pid, forged.start_time)).unwrap();
        }

        h.daemon.restart().await;
        let after = h.client.vm("a").await.unwrap();
        assert_eq!((after.state, after.pid), (VmState::Stopped, None), "the stranger is not adopted");
        assert!(VmmProcess::of(stranger.id()).unwrap().is_running(), "the stranger was signalled");
        succeed(&h.client, h.client.remove_vm("a", true).await.unwrap()).await;
        assert!(VmmProcess::of(stranger.id()).unwrap().is_running(), "rm signalled the stranger");
        h.assert_gone("a", None);
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn work_disk_seeds_go_with_their_last_vm_and_image_prune_removes_the_rest() {
    within(|agent| async move {
        let mut h = harness(&agent, |_| {}).await;
        let seeds = h.daemon.config.state_dir.join("images/.seeds");
        let seed_names = || {
            let mut names = files_in(&seeds);
            names.sort();
            names
        };
        let with_work = |name: &str, mib: u64| VmCreateRequest { work_disk_bytes: Some(mib << 20), ..request(name) };
        // Six rounds of create and rm with six sizes leave no seed behind.
        for (round, mib) in (2..8).enumerate() {
            let name = format!("round{round}");
            succeed(&h.client, h.client.create_vm(&with_work(&name, mib)).await.unwrap()).await;
            assert_eq!(seed_names(), [format!("work-{}.ext4", mib << 20)]);
            succeed(&h.client, h.client.remove_vm(&name, true).await.unwrap()).await;
            assert_eq!(seed_names(), Vec::<String>::new(), "round {round} left its seed");
        }
        // A seed stays while any VM of its size exists.
        for name in ["a", "b"] {
            succeed(&h.client, h.client.create_vm(&with_work(name, 4)).await.unwrap()).await;
        }
        succeed(&h.client, h.client.remove_vm("a", true).await.unwrap()).await;
        assert_eq!(seed_names(), [format!("work-{}.ext4", 4 << 20)], "b still uses it");

        // What an older daemon or a crash left: prune removes it, and
        // reports what it freed; the seed in use stays.
        std::fs::write(seeds.join("work-1073741824.ext4"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(seeds.join(".work-5242880.Ab12Cd.tmp"), b"half").unwrap();
        let report = h.client.prune_images().await.unwrap();
        let mut removed = report.removed.clone();
        removed.sort();
        assert_eq!(removed, [".work-5242880.Ab12Cd.tmp", "work-1073741824.ext4"]);
        assert!(report.freed_bytes >= 1 << 20, "{report:?}");
        assert_eq!(seed_names(), [format!("work-{}.ext4", 4 << 20)]);

        // And a daemon starting prunes what no VM uses.
        std::fs::write(seeds.join("work-2147483648.ext4"), b"old").unwrap();
        h.daemon.stop().await;
        h.daemon.restart().await;
        assert_eq!(seed_names(), [format!("work-{}.ext4", 4 << 20)]);
        succeed(&h.client, h.client.remove_vm("b", true).await.unwrap()).await;
        assert_eq!(seed_names(), Vec::<String>::new());
    })
    .await;
}

/// The API's timeouts apply to reading requests and idle time only: an
/// exec whose output keeps coming, and a pause in it longer than every
/// timeout, is never cut.
#[tokio::test(flavor = "multi_thread")]
async fn exec_outlives_the_api_timeouts() {
    within(|agent| async move {
        let second = Duration::from_secs(1);
        let h = harness(&agent, |c| {
            c.api.header_timeout = second;
            c.api.body_timeout = second;
            c.api.idle_timeout = second;
        })
        .await;
        h.create("a").await;
        let started = Instant::now();
        let slow = h.client.exec("a", &["sh", "-c", "echo first; sleep 3; echo second"], b"").await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(3), "the command ran for {:?}", started.elapsed());
        assert_eq!((slow.stdout.as_slice(), slow.code), (&b"first\nsecond\n"[..], Some(0)));
    })
    .await;
}
