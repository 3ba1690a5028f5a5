//! Which guest agent the daemon puts into images, with real files: a
//! dynamically linked agent (what `cargo build` leaves beside `bangerd`) is
//! passed over for a static one (busybox-static stands in for the agent
//! built by `scripts/build-agent --install`), and without a static one the
//! build is refused with every path looked at, why, and the fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{CheckStatus, ErrorCode, OperationState};
use banger_testkit::bundles::{entry, good_bundle};
use banger_testkit::requests::tiny_image;
use banger_testkit::{Canned, HttpServer, TestDaemon};

/// Candidate agents in a temporary directory.
struct Candidates {
    dir: tempfile::TempDir,
}

impl Candidates {
    fn new() -> Candidates {
        Candidates { dir: tempfile::tempdir().unwrap() }
    }

    /// A dynamically linked ELF named `banger-agent` (this test binary,
    /// which links glibc dynamically), as `cargo build` leaves it.
    fn dynamic(&self) -> PathBuf {
        let path = self.dir.path().join("target-release/banger-agent");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), &path).unwrap();
        path
    }

    /// A static ELF named `banger-agent` (busybox-static).
    fn static_one(&self) -> PathBuf {
        let path = self.dir.path().join("usr-local-lib-banger/banger-agent");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy("/bin/busybox", &path).expect("copy /bin/busybox (busybox-static; scripts/setup-host)");
        path
    }

    fn missing(&self) -> PathBuf {
        self.dir.path().join("nowhere/banger-agent")
    }
}

/// Kernel "k" in the daemon's catalog, so an image build naming it gets
/// past the kernel check to the agent's (nothing is fetched when the build
/// is refused).
async fn catalog_kernel(daemon: &TestDaemon) -> HttpServer {
    let server = HttpServer::start().await;
    let bundle = good_bundle("agent-choice");
    daemon.set_catalog(vec![entry("k", &server.route("/k.tar.zst", Canned::ok(bundle.clone())), &bundle)]);
    server
}

async fn agent_check(daemon: &TestDaemon) -> banger_api::Check {
    let report = daemon.client.doctor().await.unwrap();
    report.checks.into_iter().find(|c| c.name == "agent").expect("doctor has an agent check")
}

/// The newcomer's case: a dynamic agent first in line, a static one after.
#[tokio::test(flavor = "multi_thread")]
async fn a_dynamic_agent_beside_the_daemon_is_passed_over_for_the_static_one() {
    if !banger_testkit::require("root, to build images", banger_testkit::is_root()) {
        return;
    }
    let candidates = Candidates::new();
    let (dynamic, static_one) = (candidates.dynamic(), candidates.static_one());
    let daemon = TestDaemon::start_with(|c| c.agent_candidates = vec![dynamic.clone(), static_one.clone()]).await;

    let check = agent_check(&daemon).await;
    assert_eq!(check.status, CheckStatus::Pass, "{check:?}");
    assert!(check.detail.starts_with(&format!("{} (static ELF)", static_one.display())), "{}", check.detail);
    assert!(check.detail.contains(&format!("{} is dynamically linked", dynamic.display())), "{}", check.detail);

    let server = HttpServer::start().await;
    let bundle = good_bundle("agent-choice");
    daemon.set_catalog(vec![entry("k", &server.route("/k.tar.zst", Canned::ok(bundle.clone())), &bundle)]);
    let op = daemon.client.build_image(&tiny_image("t", "k")).await.expect("the build starts");
    let done = tokio::time::timeout(Duration::from_secs(120), daemon.client.wait(&op.id, |_| {}))
        .await
        .expect("the build finishes")
        .unwrap();
    assert_eq!(done.state, OperationState::Succeeded, "{:?}", done.error);
    // The tiny image's agent is the static candidate, byte for byte.
    let image = daemon.client.image("t").await.unwrap();
    let carried = debugfs_cat(Path::new(&image.rootfs_path), "/usr/bin/banger-agent");
    let expected = std::fs::read(&static_one).unwrap();
    assert!(
        carried == expected,
        "the image carries {} bytes, not the static agent's {}",
        carried.len(),
        expected.len()
    );
}

/// Only a dynamic agent (and a missing one): the build is refused before
/// it starts, naming each path, why, and the command that fixes it.
#[tokio::test(flavor = "multi_thread")]
async fn with_no_static_agent_the_build_error_lists_every_path_and_the_fix() {
    let candidates = Candidates::new();
    let (dynamic, missing) = (candidates.dynamic(), candidates.missing());
    let daemon = TestDaemon::start_with(|c| c.agent_candidates = vec![dynamic.clone(), missing.clone()]).await;

    let _server = catalog_kernel(&daemon).await;
    let error = daemon.client.build_image(&tiny_image("t", "k")).await.unwrap_err();
    let api = error.api().expect("an API error");
    assert_eq!(api.code, ErrorCode::Unsupported, "{error}");
    let message = &api.message;
    assert!(message.contains("no statically linked guest agent"), "{message}");
    assert!(message.contains(&format!("{} is dynamically linked", dynamic.display())), "{message}");
    assert!(message.contains(&format!("{} does not exist", missing.display())), "{message}");
    assert!(message.contains("scripts/build-agent --install"), "{message}");

    let check = agent_check(&daemon).await;
    assert_eq!(check.status, CheckStatus::Warn, "{check:?}");
    assert!(check.detail.contains(&dynamic.display().to_string()), "{}", check.detail);
    assert_eq!(check.fix.as_deref(), Some("scripts/build-agent --install"));
}

/// A configured `[vms] agent_binary` that is not static is an error naming
/// it, even though a static candidate exists: a user's explicit choice is
/// never silently replaced.
#[tokio::test(flavor = "multi_thread")]
async fn a_configured_dynamic_agent_is_an_error_not_skipped() {
    let candidates = Candidates::new();
    let (dynamic, static_one) = (candidates.dynamic(), candidates.static_one());
    let daemon = TestDaemon::start_with(|c| {
        c.agent_binary = Some(dynamic.clone());
        c.agent_candidates = vec![static_one.clone()];
    })
    .await;

    let _server = catalog_kernel(&daemon).await;
    let error = daemon.client.build_image(&tiny_image("t", "k")).await.unwrap_err();
    let message = error.api().expect("an API error").message.clone();
    assert!(message.contains("[vms] agent_binary"), "{message}");
    assert!(message.contains(&format!("{} is dynamically linked", dynamic.display())), "{message}");
    assert!(!message.contains(&static_one.display().to_string()), "{message}");

    let check = agent_check(&daemon).await;
    assert_eq!(check.status, CheckStatus::Fail, "{check:?}");
    assert!(check.detail.contains(&dynamic.display().to_string()), "{}", check.detail);
}

/// A file's bytes out of an ext4 image, without mounting it.
fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .expect("run debugfs (e2fsprogs)");
    assert!(out.status.success(), "debugfs: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}
