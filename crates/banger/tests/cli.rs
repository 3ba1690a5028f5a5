//! The built `banger` binary against an in-process daemon: what a user
//! types, what they see, and the exit codes scripts rely on.

use std::path::Path;
use std::process::Output;

use banger_testkit::bundles::{entry, good_bundle};
use banger_testkit::{sha256_hex, Canned, HttpServer, TestDaemon};

/// The whole of a test that boots a guest, preparation included (the first
/// test of a run may build the static agent and import the kernel).
const VM_TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

async fn banger(socket: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("BANGER_SOCKET")
        .output()
        .await
        .expect("run banger")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "banger failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_commands_tables_json_and_exit_codes() {
    let server = HttpServer::start().await;
    let daemon = TestDaemon::start().await;
    let socket = daemon.config.socket.clone();
    let bundle = good_bundle("cli");
    daemon.set_catalog(vec![entry("cli-k", &server.route("/cli.tar.zst", Canned::ok(bundle.clone())), &bundle)]);

    assert_eq!(json(&banger(&socket, &["kernel", "list", "--json"]).await), serde_json::json!([]));
    let available = banger(&socket, &["kernel", "list", "--available"]).await;
    let text = stdout(&available);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("STATE") && text.contains("available"), "{text}");
    assert!(text.contains(&format!("{} B", bundle.len())), "human-readable size: {text}");

    let pulled = banger(&socket, &["kernel", "pull", "cli-k"]).await;
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    assert!(stdout(&pulled).contains("kernel cli-k ready (6.1.0-test"), "{}", stdout(&pulled));

    let listing = json(&banger(&socket, &["kernel", "list", "--available", "--json"]).await);
    assert_eq!(listing[0]["state"], "pulled");
    let shown = json(&banger(&socket, &["kernel", "show", "cli-k", "--json"]).await);
    assert_eq!(shown["name"], "cli-k");
    assert_eq!(shown["source"], format!("pull:{}", server.url("/cli.tar.zst")));
    let table = stdout(&banger(&socket, &["kernel", "list"]).await);
    assert!(table.lines().nth(1).unwrap().starts_with("cli-k"), "{table}");

    let again = banger(&socket, &["kernel", "pull", "cli-k"]).await;
    assert_eq!(again.status.code(), Some(4), "already exists exits 4");
    assert!(stderr(&again).contains("already exists; use --force"), "{}", stderr(&again));
    let forced = banger(&socket, &["kernel", "pull", "cli-k", "--force", "--json"]).await;
    assert_eq!(json(&forced)["name"], "cli-k");

    let missing = banger(&socket, &["kernel", "show", "nope"]).await;
    assert_eq!(missing.status.code(), Some(3), "not found exits 3");
    assert!(stderr(&missing).contains("no kernel named \"nope\""), "{}", stderr(&missing));

    let bad = banger(&socket, &["kernel", "pull", "Bad/Name"]).await;
    assert_eq!(bad.status.code(), Some(2), "invalid argument exits 2: {}", stderr(&bad));

    let failing = HttpServer::start().await;
    let url = failing.route("/gone.tar.zst", Canned::status(404));
    daemon.set_catalog(vec![entry("gone", &url, &bundle)]);
    let failed = banger(&socket, &["kernel", "pull", "gone"]).await;
    assert_eq!(failed.status.code(), Some(1), "a failed operation exits 1");
    assert!(stderr(&failed).contains("HTTP 404"), "{}", stderr(&failed));

    let ops = json(&banger(&socket, &["operation", "list", "--json"]).await);
    assert!(ops.as_array().unwrap().len() >= 3);
    let id = ops[0]["id"].as_str().unwrap();
    assert_eq!(json(&banger(&socket, &["operation", "show", id, "--json"]).await)["state"], "failed");

    let removed = banger(&socket, &["kernel", "rm", "cli-k"]).await;
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert_eq!(json(&banger(&socket, &["kernel", "list", "--json"]).await), serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absent_daemon_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = banger(&dir.path().join("none.sock"), &["kernel", "list"]).await;
    assert_eq!(out.status.code(), Some(5), "daemon unreachable exits 5");
    let err = stderr(&out);
    assert!(err.contains("cannot reach bangerd at"), "{err}");
    assert!(err.contains("sudo bangerd") && err.contains("systemctl start bangerd"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_status_and_completions() {
    let daemon = TestDaemon::start().await;
    let socket = daemon.config.socket.clone();
    let report = json(&banger(&socket, &["doctor", "--json"]).await);
    let kvm = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "kvm").unwrap().clone();
    assert!(["pass", "warn", "fail"].contains(&kvm["status"].as_str().unwrap()));
    let people = stdout(&banger(&socket, &["doctor"]).await);
    assert!(people.contains("vmm") && people.contains("will be used"), "{people}");
    let status = json(&banger(&socket, &["daemon", "status", "--json"]).await);
    assert_eq!(status["api"], "v1");
    for shell in ["bash", "zsh", "fish"] {
        let out = banger(&socket, &["completions", shell]).await;
        assert!(out.status.success());
        assert!(stdout(&out).contains("kernel"), "{shell} completion mentions the kernel command");
    }
}

/// `image prune` removes the work-disk seeds no VM uses and says what it
/// freed, in words and in JSON.
#[tokio::test(flavor = "multi_thread")]
async fn image_prune_says_what_it_removed() {
    let daemon = TestDaemon::start().await;
    let socket = daemon.config.socket.clone();
    let seeds = daemon.config.state_dir.join("images/.seeds");
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::write(seeds.join("work-1073741824.ext4"), vec![1u8; 2 << 20]).unwrap();
    let pruned = banger(&socket, &["image", "prune"]).await;
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    assert_eq!(stdout(&pruned).trim(), "removed 1 unused work-disk seed(s), freed 2.0 MiB");
    assert!(!seeds.join("work-1073741824.ext4").exists());
    let again = json(&banger(&socket, &["image", "prune", "--json"]).await);
    assert_eq!(again, serde_json::json!({"removed": [], "freed_bytes": 0}));
}

/// The whole kernel path with Debian's real cloud kernel: import the .deb,
/// bundle it, serve the bundle over loopback, pull it back, compare.
#[tokio::test(flavor = "multi_thread")]
async fn real_debian_kernel_imports_bundles_and_pulls_back() {
    let Some(deb) = banger_testkit::debian::cloud_kernel_deb() else {
        return;
    };
    let daemon = TestDaemon::start().await;
    let socket = daemon.config.socket.clone();
    let imported = banger(&socket, &["kernel", "import", "debian", "--deb", deb.to_str().unwrap(), "--json"]).await;
    let kernel = json(&imported);
    assert!(kernel["kernel_version"].as_str().unwrap().ends_with("-cloud-amd64"), "{kernel}");
    assert_eq!(kernel["has_initrd"], true);
    assert_eq!(kernel["source"], format!("import:{}", deb.display()));

    let detected = banger(&socket, &["kernel", "import", "debian2", deb.to_str().unwrap(), "--json"]).await;
    assert_eq!(json(&detected)["vmlinux_sha256"], kernel["vmlinux_sha256"], "kind detected from contents");

    let out_dir = tempfile::tempdir().unwrap();
    let bundle_path = out_dir.path().join("debian.tar.zst");
    let bundled =
        banger(&socket, &["kernel", "bundle", "debian", "-o", bundle_path.to_str().unwrap(), "--distro", "debian"])
            .await;
    let mut catalog_entry: banger_api::CatalogEntry = serde_json::from_slice(&bundled.stdout).unwrap();
    let bytes = std::fs::read(&bundle_path).unwrap();
    assert_eq!(catalog_entry.tarball_sha256, sha256_hex(&bytes));
    assert_eq!(catalog_entry.size_bytes, bytes.len() as u64);

    let server = HttpServer::start().await;
    catalog_entry.name = "debian-pulled".into();
    catalog_entry.tarball_url = server.route("/debian.tar.zst", Canned::ok(bytes));
    daemon.set_catalog(vec![catalog_entry]);
    let pulled = json(&banger(&socket, &["kernel", "pull", "debian-pulled", "--json"]).await);
    assert_eq!(pulled["vmlinux_sha256"], kernel["vmlinux_sha256"]);
    assert_eq!(pulled["has_initrd"], true);
    let kernels = daemon.state_dir().join("kernels");
    let initrd = |name: &str| std::fs::read(kernels.join(name).join("initrd.img")).unwrap();
    assert_eq!(initrd("debian"), initrd("debian-pulled"));

    let not_a_kernel = out_dir.path().join("notes.txt");
    std::fs::write(&not_a_kernel, "hello").unwrap();
    let refused = banger(&socket, &["kernel", "import", "junk", not_a_kernel.to_str().unwrap()]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("is not an ELF vmlinux, an x86 bzImage or a Debian package"),
        "{}",
        stderr(&refused)
    );
    assert!(!kernels.join("junk").exists());
    assert_eq!(banger_testkit::TestDaemon::kernel_dir_entries(&daemon), ["debian", "debian-pulled", "debian2"]);
}

async fn banger_stdin(socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("BANGER_SOCKET")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run banger");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

/// The README's main flow with a real guest: with a kernel, build the
/// tiny image, create a VM, run commands in it, read its console, remove it.
#[tokio::test(flavor = "multi_thread")]
async fn vm_create_exec_logs_and_rm_from_the_cli() {
    banger_testkit::with_timeout(VM_TEST_TIMEOUT, vm_create_exec_logs_and_rm_from_the_cli_body()).await;
}

async fn vm_create_exec_logs_and_rm_from_the_cli_body() {
    if !banger_testkit::require("root, to build images", banger_testkit::is_root()) {
        return;
    }
    // The kernel is the run's shared import (`kernel import` itself is
    // tested above); the image build, create and exec are this test's.
    let Some(kernel) = banger_testkit::debian_kernel().await else {
        return;
    };
    let agent = tokio::task::spawn_blocking(banger_testkit::guest::agent_binary).await.unwrap();
    let daemon = TestDaemon::start_with_kernel(&kernel, |c| {
        c.agent_binary = Some(agent);
        c.vmm = Some(banger_api::VmmChoice::Qemu);
    })
    .await;
    let socket = daemon.config.socket.clone();
    let ok = |out: &Output| assert!(out.status.success(), "{}", stderr(out));
    let built = banger(&socket, &["image", "build", "tiny", "--recipe", "tiny", "--kernel-ref", "debian"]).await;
    ok(&built);
    assert!(stdout(&built).contains("image tiny ready"), "{}", stdout(&built));

    let created = banger(&socket, &["vm", "create", "dev", "--image", "tiny", "--memory", "256M"]).await;
    ok(&created);
    assert!(stdout(&created).contains("VM dev running (qemu/"), "{}", stdout(&created));
    let listed = stdout(&banger(&socket, &["vm", "list"]).await);
    assert!(listed.lines().nth(1).is_some_and(|l| l.starts_with("dev") && l.contains("running")), "{listed}");

    let uname = banger(&socket, &["vm", "exec", "dev", "uname", "-a"]).await;
    ok(&uname);
    assert!(stdout(&uname).starts_with("Linux dev "), "{}", stdout(&uname));
    let failing = banger(&socket, &["vm", "exec", "dev", "--", "sh", "-c", "echo to-err >&2; exit 42"]).await;
    assert_eq!(failing.status.code(), Some(42), "the guest's exit code is banger's");
    assert_eq!(stderr(&failing), "to-err\n");
    let missing = banger(&socket, &["vm", "exec", "dev", "--", "no-such-program"]).await;
    assert_eq!(missing.status.code(), Some(127), "a program that cannot start exits 127: {}", stderr(&missing));
    assert!(stderr(&missing).contains("no-such-program"), "{}", stderr(&missing));
    let stopped_vm = banger(&socket, &["vm", "exec", "nope", "--", "true"]).await;
    assert_eq!(stopped_vm.status.code(), Some(255), "banger's own failure exits 255");
    let piped = banger_stdin(&socket, &["vm", "exec", "-i", "dev", "--", "wc", "-c"], &[b'x'; 100_000]).await;
    ok(&piped);
    assert_eq!(stdout(&piped).trim(), "100000", "stdin is forwarded whole");

    let logs = banger(&socket, &["vm", "logs", "dev"]).await;
    ok(&logs);
    assert!(stdout(&logs).contains("Linux version"), "{}", stdout(&logs));

    let refused = banger(&socket, &["vm", "rm", "dev"]).await;
    assert_eq!(refused.status.code(), Some(4), "a running VM is not removed without --force");
    ok(&banger(&socket, &["vm", "rm", "dev", "--force"]).await);
    assert_eq!(json(&banger(&socket, &["vm", "list", "--json"]).await), serde_json::json!([]));
    let bad = banger(&socket, &["vm", "create", "Not_A_Label", "--image", "tiny"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("invalid name"), "{}", stderr(&bad));
}
