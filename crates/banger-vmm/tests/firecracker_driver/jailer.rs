//! Starting Firecracker under its jailer, against a fake jailer that checks
//! its arguments and builds the jail like Firecracker's (v1.16,
//! `docs/jailer.md`) but emulates the chroot: the fake firecracker it execs
//! resolves every path under the jail root, so the validating API server
//! sees, and needs, the in-jail paths.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;

use banger_vmm::firecracker::{agent_endpoint, jail, requests_with_paths, Jailer, DEFAULT_JAIL_IDENTITY};
use banger_vmm::AgentEndpoint;

use super::*;

/// The fake jailer process. Checks its arguments as the jailer does,
/// creates `<chroot base>/<exec file name>/<id>/root` with a copy of the
/// exec file, records its command line to `jailer.args` in the run
/// directory (the chroot base's parent, in the driver's layout), and execs
/// the copy in place with `--id=<id>`, the start-time arguments and those
/// after `--`. Does nothing when run as an ordinary test.
#[test]
#[ignore = "the fake jailer process, started by the other tests"]
fn fake_jailer() {
    let Ok(args) = std::env::var("FAKE_JAILER_ARGS") else {
        return;
    };
    let args: Vec<String> = args.lines().map(str::to_owned).collect();
    let error = match enter_jail(&args) {
        Ok(mut firecracker) => firecracker.exec().to_string(),
        Err(message) => message,
    };
    eprintln!("jailer: {error}");
    std::process::exit(1);
}

/// Does the jailer's work up to the exec, which it returns.
fn enter_jail(args: &[String]) -> Result<std::process::Command, String> {
    let (ours, firecrackers) = match args.iter().position(|a| a == "--") {
        Some(end) => (&args[..end], &args[end + 1..]),
        None => (args, &[][..]),
    };
    let mut flags = std::collections::HashMap::new();
    let mut rest = ours.iter();
    while let Some(flag) = rest.next() {
        let known = ["--id", "--exec-file", "--uid", "--gid", "--chroot-base-dir"];
        if !known.contains(&flag.as_str()) {
            return Err(format!("unknown or unemulated argument {flag}"));
        }
        let value = rest.next().ok_or(format!("{flag} needs a value"))?;
        if flags.insert(flag.as_str(), value.as_str()).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    let required = |flag: &str| flags.get(flag).copied().ok_or(format!("missing {flag}"));
    let id = required("--id")?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("invalid id {id:?}"));
    }
    let exec_file = Path::new(required("--exec-file")?);
    let exec_name = exec_file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !exec_name.contains("firecracker") || !exec_file.is_file() {
        return Err(format!("invalid exec file {}", exec_file.display()));
    }
    for flag in ["--uid", "--gid"] {
        required(flag)?.parse::<u32>().map_err(|_| format!("{flag} is not a number"))?;
    }
    // The real default is /srv/jailer; a test never wants that.
    let chroot_base = Path::new(required("--chroot-base-dir")?);
    let root = chroot_base.join(exec_name).join(id).join("root");
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    std::fs::copy(exec_file, root.join(exec_name)).map_err(|e| format!("cannot copy the exec file: {e}"))?;
    let run_dir = chroot_base.parent().ok_or("the chroot base has no parent")?;
    std::fs::write(run_dir.join("jailer.args"), args.join("\n")).map_err(|e| e.to_string())?;
    let mut firecracker = std::process::Command::new(root.join(exec_name));
    firecracker
        .arg(format!("--id={id}"))
        .args(["--start-time-us=0", "--start-time-cpu-us=0"])
        .args(firecrackers)
        .current_dir(&root)
        .env("FAKE_FC_CHROOT", &root)
        .env("FAKE_FC_RUN_DIR", run_dir);
    Ok(firecracker)
}

fn jailed() -> Firecracker {
    Firecracker { jailer: Some(Jailer::new(&fakes().jailer)), ..Firecracker::new(&fakes().firecracker) }
}

fn jail_root(spec: &VmSpec) -> PathBuf {
    spec.run_dir.join("jail/firecracker/fake-vm/root")
}

/// The host files of `spec` and the names they get in the jail.
fn linked_files(spec: &VmSpec) -> Vec<(PathBuf, &'static str)> {
    vec![
        (spec.kernel.clone(), "vmlinux"),
        (spec.initrd.clone().unwrap(), "initrd.img"),
        (spec.disks[0].path.clone(), "disk0.ext4"),
        (spec.disks[1].path.clone(), "disk1.ext4"),
    ]
}

fn inode(path: &Path) -> (u64, u64) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.dev(), meta.ino())
}

/// The kernel, initrd and disks are where they were, with their contents,
/// and no longer linked from anywhere else.
fn assert_originals_intact(spec: &VmSpec) {
    let kernel = std::fs::read(&spec.kernel).unwrap();
    assert!(kernel.starts_with(b"\x7fELF"), "the kernel was changed");
    let originals = [spec.initrd.clone().unwrap(), spec.disks[0].path.clone(), spec.disks[1].path.clone()];
    for path in &originals {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), format!("contents of {name}"));
    }
    for path in originals.iter().chain([&spec.kernel]) {
        assert_eq!(std::fs::metadata(path).unwrap().nlink(), 1, "{} is still linked", path.display());
    }
}

#[tokio::test]
async fn start_under_the_jailer_links_files_in_and_sends_in_jail_paths() {
    banger_testkit::with_timeout(
        super::FAKE_VMM_TEST_TIMEOUT,
        start_under_the_jailer_links_files_in_and_sends_in_jail_paths_body(),
    )
    .await;
}

async fn start_under_the_jailer_links_files_in_and_sends_in_jail_paths_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    with_behaviour(&spec, &Behaviour { exit_on_ctrl_alt_del: true, ..Behaviour::default() });
    let driver = jailed();

    let process = driver.start(&spec).await.unwrap();
    assert!(process.is_running());
    assert_eq!(banger_vmm::VmmProcess::recorded_in(&spec.run_dir), Some(process));
    let pid = process.pid;
    let fake_pid: u32 = std::fs::read_to_string(spec.run_dir.join("fake.pid")).unwrap().parse().unwrap();
    assert_eq!(fake_pid, pid, "the jailer execs firecracker in place");
    assert_ne!(current_sid(), sid(pid), "firecracker must run in its own session");

    let jailer_args = std::fs::read_to_string(spec.run_dir.join("jailer.args")).unwrap();
    let (firecracker, chroot_base) = (fakes().firecracker.to_str().unwrap(), spec.run_dir.join("jail"));
    assert_eq!(
        jailer_args.lines().collect::<Vec<_>>(),
        [
            "--id",
            "fake-vm",
            "--exec-file",
            firecracker,
            "--uid",
            &DEFAULT_JAIL_IDENTITY.uid.to_string(),
            "--gid",
            &DEFAULT_JAIL_IDENTITY.gid.to_string(),
            "--chroot-base-dir",
            chroot_base.to_str().unwrap(),
            "--",
            "--api-sock",
            "/run/firecracker.socket",
            "--log-path",
            "/run/firecracker.log",
            "--level",
            "Info",
            "--show-level",
        ]
    );
    let args = std::fs::read_to_string(spec.run_dir.join("fake.args")).unwrap();
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "--id=fake-vm",
            "--start-time-us=0",
            "--start-time-cpu-us=0",
            "--api-sock",
            "/run/firecracker.socket",
            "--log-path",
            "/run/firecracker.log",
            "--level",
            "Info",
            "--show-level"
        ]
    );

    let root = jail_root(&spec);
    for (original, name) in linked_files(&spec) {
        assert_eq!(inode(&root.join(name)), inode(&original), "{name} is not a hard link of {}", original.display());
    }
    // The writable disk is the jailed uid's while it runs; the read-only
    // files are not handed over.
    let owner = |path: &Path| std::fs::metadata(path).unwrap().uid();
    assert_eq!(owner(&spec.disks[0].path), DEFAULT_JAIL_IDENTITY.uid);
    assert_eq!(owner(&spec.disks[1].path), 0);
    assert_eq!(owner(&spec.kernel), 0);
    // What Firecracker writes is inside the jail, reached from the run dir.
    for (file, in_jail) in [("firecracker.log", "run/firecracker.log"), ("metrics.json", "run/metrics.json")] {
        let link = spec.run_dir.join(file);
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink(), "{file} is not a link");
        assert_eq!(inode(&link), inode(&root.join(in_jail)));
        assert_eq!(owner(&link), DEFAULT_JAIL_IDENTITY.uid);
    }

    let api = OpenApi::load();
    let sent = received(&spec.run_dir);
    for request in &sent {
        api.validate_request(&request.method, &request.path, Some(&request.body))
            .unwrap_or_else(|e| panic!("{} {}: {e}", request.path, request.body));
    }
    let host_dir = dir.path().to_str().unwrap();
    assert!(sent.iter().all(|r| !r.body.to_string().contains(host_dir)), "a host path was sent: {sent:?}");
    let paths: Vec<(&str, &str)> = sent
        .iter()
        .flat_map(|r| r.body.as_object().unwrap().iter())
        .filter_map(|(field, value)| Some((field.as_str(), value.as_str()?)))
        .filter(|(field, _)| field.ends_with("_path") || *field == "path_on_host")
        .collect();
    assert_eq!(
        paths,
        [
            ("metrics_path", "/run/metrics.json"),
            ("initrd_path", "/initrd.img"),
            ("kernel_image_path", "/vmlinux"),
            ("path_on_host", "/disk0.ext4"),
            ("path_on_host", "/disk1.ext4"),
            ("uds_path", "/run/vsock.sock"),
        ]
    );
    let (_, in_jail) = jail::plan(&spec);
    let to_received = |r: &ApiRequest| Received { method: r.method().into(), path: r.path(), body: r.body() };
    let expected: Vec<Received> = requests_with_paths(&spec, &in_jail).unwrap().iter().map(to_received).collect();
    assert_eq!(sent, expected);

    // The host side reaches the sockets in the jail from the run directory.
    assert!(std::fs::symlink_metadata(spec.run_dir.join("firecracker.sock")).unwrap().file_type().is_symlink());
    let AgentEndpoint::FirecrackerVsock { uds, .. } = agent_endpoint(&spec.run_dir) else { panic!("not vsock") };
    assert_eq!(uds, spec.run_dir.join("vsock.sock"));
    tokio::net::UnixStream::connect(&uds).await.expect("the vsock socket is reachable through the run directory");

    let started = Instant::now();
    driver.stop(&spec.run_dir, process, Duration::from_secs(20)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "a guest that shuts down is not waited for");
    assert_eq!(received(&spec.run_dir).last().unwrap().body["action_type"], "SendCtrlAltDel");
    assert!(spec.run_dir.join("firecracker.log").is_file(), "Firecracker's log is in the run directory");
    driver.release(&spec.run_dir).unwrap();
    assert_nothing_left(&spec.run_dir, pid);
    assert_originals_intact(&spec);
    assert_eq!(owner(&spec.disks[0].path), 0, "the disk is given back to the daemon");
}

#[tokio::test]
async fn a_refused_request_kills_the_jailed_firecracker_and_removes_the_jail() {
    banger_testkit::with_timeout(
        super::FAKE_VMM_TEST_TIMEOUT,
        a_refused_request_kills_the_jailed_firecracker_and_removes_the_jail_body(),
    )
    .await;
}

async fn a_refused_request_kills_the_jailed_firecracker_and_removes_the_jail_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    with_behaviour(&spec, &Behaviour { fail_path: Some("/drives/rootfs".into()), ..Behaviour::default() });
    let error = jailed().start(&spec).await.unwrap_err();
    let VmmError::Api { request, reason } = &error else { panic!("not an API error: {error}") };
    assert_eq!(request, "PUT /drives/rootfs");
    assert!(reason.contains("injected failure"), "{reason}");
    let pid: u32 = std::fs::read_to_string(spec.run_dir.join("fake.pid")).unwrap().parse().unwrap();
    assert_nothing_left(&spec.run_dir, pid);
    assert_originals_intact(&spec);
}

#[tokio::test]
async fn kill_removes_the_jail() {
    banger_testkit::with_timeout(super::FAKE_VMM_TEST_TIMEOUT, kill_removes_the_jail_body()).await;
}

async fn kill_removes_the_jail_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let driver = jailed();
    let process = driver.start(&spec).await.unwrap();
    let pid = process.pid;
    assert!(jail_root(&spec).join("disk0.ext4").is_file());
    driver.kill(&spec.run_dir, process).await.unwrap();
    driver.release(&spec.run_dir).unwrap();
    assert_nothing_left(&spec.run_dir, pid);
    assert_originals_intact(&spec);
}

/// The daemon puts each VM's jail beside its disks (the run dir is often
/// a tmpfs, and disks are hard-linked into the jail).
#[tokio::test]
async fn the_jail_can_live_beside_the_disks() {
    banger_testkit::with_timeout(super::FAKE_VMM_TEST_TIMEOUT, the_jail_can_live_beside_the_disks_body()).await;
}

async fn the_jail_can_live_beside_the_disks_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let jail_dir = dir.path().join("disks-jail");
    let driver = Firecracker { jail_dir: Some(jail_dir.clone()), ..jailed() };
    let process = driver.start(&spec).await.unwrap();
    let pid = process.pid;
    let root = jail_dir.join("firecracker/fake-vm/root");
    assert_eq!(inode(&root.join("disk0.ext4")), inode(&spec.disks[0].path));
    assert!(!spec.run_dir.join("jail").exists(), "nothing under the run dir's default jail");
    driver.kill(&spec.run_dir, process).await.unwrap();
    driver.release(&spec.run_dir).unwrap();
    assert!(!jail_dir.exists(), "kill removes the jail where it is");
    assert_nothing_left(&spec.run_dir, pid);
    assert_originals_intact(&spec);
}

#[tokio::test]
async fn a_stale_jail_is_replaced_on_start() {
    banger_testkit::with_timeout(super::FAKE_VMM_TEST_TIMEOUT, a_stale_jail_is_replaced_on_start_body()).await;
}

async fn a_stale_jail_is_replaced_on_start_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let root = jail_root(&spec);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("disk0.ext4"), b"left by a crashed daemon").unwrap();
    let driver = jailed();
    let process = driver.start(&spec).await.unwrap();
    let pid = process.pid;
    assert_eq!(inode(&root.join("disk0.ext4")), inode(&spec.disks[0].path));
    driver.kill(&spec.run_dir, process).await.unwrap();
    driver.release(&spec.run_dir).unwrap();
    assert_nothing_left(&spec.run_dir, pid);
}

#[tokio::test]
async fn a_missing_jailer_is_reported_and_leaves_no_jail() {
    banger_testkit::with_timeout(super::FAKE_VMM_TEST_TIMEOUT, a_missing_jailer_is_reported_and_leaves_no_jail_body())
        .await;
}

async fn a_missing_jailer_is_reported_and_leaves_no_jail_body() {
    let dir = tempfile::tempdir().unwrap();
    let spec = vm(dir.path());
    let jailer = dir.path().join("no-jailer");
    let driver = Firecracker { jailer: Some(Jailer::new(&jailer)), ..Firecracker::new(&fakes().firecracker) };
    let error = driver.start(&spec).await.unwrap_err();
    assert!(matches!(&error, VmmError::MissingBinary { binary } if *binary == jailer.display().to_string()), "{error}");
    assert!(spec.run_dir.join("jail").symlink_metadata().is_err(), "the jail is left behind");
    assert_originals_intact(&spec);
}

/// A run directory on another filesystem than the kernel and disks (here
/// `/dev/shm`, a tmpfs, as `/run` usually is): read-only files are copied
/// into the jail, a writable disk is refused before anything is spawned.
#[tokio::test]
async fn across_filesystems_read_only_files_are_copied_and_writable_disks_refused() {
    banger_testkit::with_timeout(
        super::FAKE_VMM_TEST_TIMEOUT,
        across_filesystems_read_only_files_are_copied_and_writable_disks_refused_body(),
    )
    .await;
}

async fn across_filesystems_read_only_files_are_copied_and_writable_disks_refused_body() {
    let dir = tempfile::tempdir().unwrap();
    let other_fs = tempfile::tempdir_in("/dev/shm");
    if !banger_testkit::require("/dev/shm, a second filesystem", other_fs.is_ok()) {
        return;
    }
    let other_fs = other_fs.expect("checked");
    let apart = inode(dir.path()).0 != inode(other_fs.path()).0;
    if !banger_testkit::require("/dev/shm on another filesystem than the temporary directory", apart) {
        return;
    }
    let mut spec = vm(dir.path());
    spec.run_dir = other_fs.path().join("run");
    std::fs::create_dir_all(&spec.run_dir).unwrap();
    let driver = jailed();

    let error = driver.start(&spec).await.unwrap_err();
    assert!(matches!(&error, VmmError::InvalidSpec(m) if m.contains("root.ext4")), "{error}");
    assert!(!spec.run_dir.join("fake.pid").exists(), "nothing may be spawned");
    assert!(spec.run_dir.join("jail").symlink_metadata().is_err(), "the jail is left behind");

    spec.disks.retain(|d| d.read_only);
    let process = driver.start(&spec).await.unwrap();
    let pid = process.pid;
    let root = jail_root(&spec);
    assert_ne!(inode(&root.join("vmlinux")), inode(&spec.kernel), "cannot be a link across filesystems");
    assert_eq!(std::fs::read(root.join("vmlinux")).unwrap(), std::fs::read(&spec.kernel).unwrap());
    assert_eq!(std::fs::read(root.join("disk0.ext4")).unwrap(), std::fs::read(&spec.disks[0].path).unwrap());
    driver.kill(&spec.run_dir, process).await.unwrap();
    driver.release(&spec.run_dir).unwrap();
    assert_nothing_left(&spec.run_dir, pid);
    assert!(spec.kernel.is_file() && spec.disks[0].path.is_file());
}
