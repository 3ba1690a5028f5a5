//! Numbers in requests are range-checked before any work starts (vCPUs and
//! memory against the host, disk sizes against the 16 TiB ceiling, the
//! kernel of an image build), with a 400 or 404 and nothing left behind;
//! disk sizes are rounded up to whole MiB, and the record says what the
//! file has. VMs run on the test driver; none is booted.

use std::path::PathBuf;
use std::time::Duration;

use banger_api::{
    ErrorCode, ImageBuildRequest, ImageRecipe, KernelPullRequest, OperationState, Vm, VmCreateRequest, VmSetRequest,
    VmState,
};
use banger_testkit::bundles::{entry, good_bundle};
use banger_testkit::requests::{succeed, tiny_image, vm};
use banger_testkit::{prereq, Canned, HttpServer, TestDaemon};
use banger_vmm::local::{BootFault, Local, LocalFaults};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;
/// A boot that never answers holds its VM this long.
const BOOT_TIMEOUT: Duration = Duration::from_secs(8);

/// A daemon with kernel "k" (pulled from a loopback catalog) and image
/// "tiny", its VMs on the test driver.
async fn daemon(server: &HttpServer) -> TestDaemon {
    daemon_with_faults(server, LocalFaults::default()).await
}

async fn daemon_with_faults(server: &HttpServer, faults: LocalFaults) -> TestDaemon {
    let agent = banger_testkit::guest::agent_binary();
    let daemon = TestDaemon::start_with(|c| {
        c.agent_binary = Some(agent.clone());
        c.test_driver = Some(Local { agent: agent.clone(), faults });
        c.boot_timeout = BOOT_TIMEOUT;
    })
    .await;
    let bundle = good_bundle("ranges");
    daemon.set_catalog(vec![entry("k", &server.route("/k.tar.zst", Canned::ok(bundle.clone())), &bundle)]);
    let client = &daemon.client;
    succeed(client, client.pull_kernel(&KernelPullRequest { name: "k".into(), force: false }).await.unwrap()).await;
    succeed(client, client.build_image(&tiny_image("tiny", "k")).await.unwrap()).await;
    daemon
}

/// A VM of the tiny image, not started.
fn request(name: &str) -> VmCreateRequest {
    VmCreateRequest { no_start: true, ..vm(name, "tiny") }
}

/// The error of a refused request, after checking its code.
fn refused<T: std::fmt::Debug>(result: banger_client::Result<T>, code: ErrorCode) -> String {
    let error = result.expect_err("the request should be refused");
    let api = error.api().unwrap_or_else(|| panic!("not an API error: {error}"));
    assert_eq!(api.code, code, "{api:?}");
    api.message.clone()
}

fn host_cpus() -> u32 {
    u32::try_from(std::thread::available_parallelism().unwrap().get()).unwrap()
}

fn host_memory_mib() -> u32 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    u32::try_from(kib / 1024).unwrap()
}

fn len(path: PathBuf) -> u64 {
    std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_creates_are_refused_before_the_operation() {
    if !prereq::require("root, to build the tiny image", prereq::is_root()) {
        return;
    }
    prereq::with_timeout(TEST_TIMEOUT, async {
        let server = HttpServer::start().await;
        let daemon = daemon(&server).await;
        let client = &daemon.client;
        let ops_before = client.operations().await.unwrap().len();
        let too_many_cpus = host_cpus() + 1;
        let too_much_memory = host_memory_mib() + 1;
        let cases: Vec<(&str, VmCreateRequest, ErrorCode, &str)> = vec![
            (
                "no cpus",
                VmCreateRequest { cpus: Some(0), ..request("a1") },
                ErrorCode::InvalidArgument,
                "cpus must be between 1 and",
            ),
            (
                "more cpus than the host",
                VmCreateRequest { cpus: Some(too_many_cpus), ..request("a2") },
                ErrorCode::InvalidArgument,
                "(the host's CPUs)",
            ),
            (
                "too little memory",
                VmCreateRequest { memory_mib: Some(63), ..request("a3") },
                ErrorCode::InvalidArgument,
                "memory must be between 64 MiB",
            ),
            (
                "more memory than the host",
                VmCreateRequest { memory_mib: Some(too_much_memory), ..request("a4") },
                ErrorCode::InvalidArgument,
                "(the host's memory)",
            ),
            (
                "u32::MAX memory",
                VmCreateRequest { memory_mib: Some(u32::MAX), ..request("a5") },
                ErrorCode::InvalidArgument,
                "(the host's memory)",
            ),
            (
                "a work disk of u64::MAX",
                VmCreateRequest { work_disk_bytes: Some(u64::MAX), ..request("a6") },
                ErrorCode::InvalidArgument,
                "work_disk_bytes must be at most",
            ),
            (
                "a work disk of 17 TiB",
                VmCreateRequest { work_disk_bytes: Some(17 << 40), ..request("a7") },
                ErrorCode::InvalidArgument,
                "(16 TiB less 1 MiB)",
            ),
            (
                "a work disk under 1 MiB",
                VmCreateRequest { work_disk_bytes: Some(MIB - 1), ..request("a8") },
                ErrorCode::InvalidArgument,
                "at least 1048576 bytes",
            ),
            (
                "a root disk past 2^63",
                VmCreateRequest { disk_size_bytes: Some(1 << 63), ..request("a9") },
                ErrorCode::InvalidArgument,
                "disk_size_bytes",
            ),
            (
                "a root disk under the image",
                VmCreateRequest { disk_size_bytes: Some(4096), ..request("a10") },
                ErrorCode::InvalidArgument,
                "at least the image's size",
            ),
            (
                "an unknown kernel",
                VmCreateRequest { kernel: Some("nope".into()), ..request("a11") },
                ErrorCode::NotFound,
                "\"nope\"",
            ),
            (
                "an empty kernel",
                VmCreateRequest { kernel: Some(String::new()), ..request("a12") },
                ErrorCode::InvalidArgument,
                "kernel must name a kernel",
            ),
        ];
        // Every case runs, and the failure lists each one that answered wrong.
        let mut wrong = Vec::new();
        let count = cases.len();
        for (what, create, code, says) in cases {
            match client.create_vm(&create).await {
                Err(e) if e.api().is_some_and(|a| a.code == code && a.message.contains(says)) => {}
                Err(e) => wrong.push(format!("{what}: wanted {code} saying {says:?}, got {e}")),
                Ok(op) => {
                    let done = client.wait(&op.id, |_| {}).await.unwrap();
                    wrong.push(format!("{what}: wanted {code}, got 202 and then {:?} {:?}", done.state, done.error));
                    if let Ok(op) = client.remove_vm(&create.name, true).await {
                        let _ = client.wait(&op.id, |_| {}).await;
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{} of {count} cases answered wrong:\n{}", wrong.len(), wrong.join("\n"));
        assert!(client.vms().await.unwrap().is_empty(), "a refused create left a VM");
        let left: Vec<_> = std::fs::read_dir(daemon.config.state_dir.join("vms")).map_or(Vec::new(), |d| d.collect());
        assert!(left.is_empty(), "a refused create left files: {left:?}");
        assert_eq!(client.operations().await.unwrap().len(), ops_before, "a refused create started an operation");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_sizes_are_rounded_up_to_mib_in_the_record_and_the_file() {
    if !prereq::require("root, to build the tiny image", prereq::is_root()) {
        return;
    }
    prereq::with_timeout(TEST_TIMEOUT, async {
        let server = HttpServer::start().await;
        let daemon = daemon(&server).await;
        let client = &daemon.client;
        let vms = daemon.config.state_dir.join("vms");

        let create = VmCreateRequest { work_disk_bytes: Some(MIB + 1), ..request("v") };
        let vm: Vm = succeed(client, client.create_vm(&create).await.unwrap()).await.and_then(|r| r.into_vm()).unwrap();
        assert_eq!(vm.work_disk_bytes, Some(2 * MIB));
        assert_eq!(len(vms.join("v/work.ext4")), 2 * MIB);
        assert_eq!(len(vms.join("v/root.ext4")), vm.disk_size_bytes);

        // The case: 104857601 bytes made a 104857600-byte file
        // while the record said 104857601.
        let grown = client.resize_vm_disk("v", 104_857_601).await.unwrap();
        assert_eq!(grown.disk_size_bytes, 101 * MIB);
        assert_eq!(len(vms.join("v/root.ext4")), 101 * MIB);
        assert_eq!(client.vm("v").await.unwrap().disk_size_bytes, 101 * MIB);

        for size in [17 << 40, 1 << 63, u64::MAX] {
            let message = refused(client.resize_vm_disk("v", size).await, ErrorCode::InvalidArgument);
            assert!(message.contains("size_bytes must be at most"), "{size}: {message}");
        }
        assert_eq!(len(vms.join("v/root.ext4")), 101 * MIB, "a refused resize changed the file");

        // Within the ceiling, but past what a 64 MiB ext4 can grow to in
        // one step with e2fsprogs 1.47 (schemathesis found it as a 500 that
        // left a 16 TiB file behind a record of the old size). Refused or
        // done, the record says what the file has, and the ext4 is clean.
        let w =
            succeed(client, client.create_vm(&request("w")).await.unwrap()).await.and_then(|r| r.into_vm()).unwrap();
        let disk = vms.join("w/root.ext4");
        match client.resize_vm_disk("w", banger_api::MAX_DISK_BYTES).await {
            Ok(grown) => assert_eq!(grown.disk_size_bytes, banger_api::MAX_DISK_BYTES),
            Err(e) => {
                let api = e.api().unwrap_or_else(|| panic!("not an API error: {e}"));
                assert_eq!(api.code, ErrorCode::InvalidArgument, "{api:?}");
                assert!(api.message.contains("the disk is left as it was"), "{}", api.message);
                assert_eq!(client.vm("w").await.unwrap().disk_size_bytes, w.disk_size_bytes);
            }
        }
        assert_eq!(len(disk.clone()), client.vm("w").await.unwrap().disk_size_bytes, "the record is not the file");
        let fsck = std::process::Command::new("e2fsck").args(["-f", "-n"]).arg(&disk).output().unwrap();
        assert!(fsck.status.success(), "the filesystem is not clean after the grow: {fsck:?}");

        for (set, says) in [
            (VmSetRequest { cpus: Some(0), memory_mib: None }, "cpus must be between 1 and"),
            (VmSetRequest { cpus: Some(host_cpus() + 1), memory_mib: None }, "(the host's CPUs)"),
            (VmSetRequest { cpus: None, memory_mib: Some(host_memory_mib() + 1) }, "(the host's memory)"),
        ] {
            let message = refused(client.set_vm("v", &set).await, ErrorCode::InvalidArgument);
            assert!(message.contains(says), "{set:?}: {message}");
        }
        let after = client.vm("v").await.unwrap();
        assert_eq!((after.cpus, after.memory_mib), (vm.cpus, vm.memory_mib), "a refused set changed the VM");
        let set = client.set_vm("v", &VmSetRequest { cpus: Some(host_cpus()), memory_mib: Some(64) }).await.unwrap();
        assert_eq!((set.cpus, set.memory_mib), (host_cpus(), 64));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_build_with_an_empty_or_unknown_kernel_is_refused_before_the_operation() {
    if !prereq::require("root, to build the tiny image", prereq::is_root()) {
        return;
    }
    prereq::with_timeout(TEST_TIMEOUT, async {
        let server = HttpServer::start().await;
        let daemon = daemon(&server).await;
        let client = &daemon.client;
        let ops_before = client.operations().await.unwrap().len();
        let build = |kernel: &str, size_bytes: Option<u64>| ImageBuildRequest {
            name: "other".into(),
            recipe: Some(ImageRecipe::Tiny),
            from_dir: None,
            from_tar: None,
            kernel: kernel.into(),
            size_bytes,
            force: false,
        };
        let message = refused(client.build_image(&build("", None)).await, ErrorCode::InvalidArgument);
        assert_eq!(message, "kernel must name a kernel (see `banger kernel list`)");
        let message = refused(client.build_image(&build("nope", None)).await, ErrorCode::NotFound);
        assert!(message.contains("\"nope\""), "{message}");
        let message = refused(client.build_image(&build("k", Some(u64::MAX))).await, ErrorCode::InvalidArgument);
        assert!(message.starts_with("size_bytes must be at most"), "{message}");
        assert_eq!(client.operations().await.unwrap().len(), ops_before, "a refused build started an operation");
        let names: Vec<String> = client.images().await.unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["tiny"]);
    })
    .await;
}

/// A change answered at once (`set`, a disk resize) does not wait on a
/// boot in progress: it is told the VM is busy within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_boot_is_told_busy_at_once() {
    if !prereq::require("root, to build the tiny image", prereq::is_root()) {
        return;
    }
    prereq::with_timeout(TEST_TIMEOUT, async {
        let server = HttpServer::start().await;
        let faults = LocalFaults::default();
        faults.set("hung", BootFault::NeverListens);
        let daemon = daemon_with_faults(&server, faults).await;
        let client = &daemon.client;
        succeed(client, client.create_vm(&request("hung")).await.unwrap()).await;
        let boot = client.start_vm("hung", false).await.unwrap();
        banger_testkit::wait_vm(client, "hung", Duration::from_secs(10), "starting", |vm| {
            vm.state == VmState::Starting
        })
        .await;
        for attempt in ["set", "resize"] {
            let asked = std::time::Instant::now();
            let answer = match attempt {
                "set" => client.set_vm("hung", &VmSetRequest { cpus: Some(1), memory_mib: None }).await.map(|_| ()),
                _ => client.resize_vm_disk("hung", 128 * MIB).await.map(|_| ()),
            };
            let message = refused(answer, ErrorCode::Conflict);
            assert!(message.contains("is busy"), "{attempt}: {message}");
            assert!(asked.elapsed() < Duration::from_secs(5), "{attempt}: busy after {:?}", asked.elapsed());
        }
        let done = client.wait(&boot.id, |_| {}).await.unwrap();
        assert_eq!(done.state, OperationState::Failed, "the hung boot times out");
        let vm = client.vm("hung").await.unwrap();
        assert_eq!((vm.cpus, len(daemon.config.state_dir.join("vms/hung/root.ext4"))), (1, vm.disk_size_bytes));
    })
    .await;
}
