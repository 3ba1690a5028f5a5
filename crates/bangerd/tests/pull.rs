//! `kernel pull` through a whole daemon: real tar.zst bundles served by a
//! real HTTP server on 127.0.0.1, followed through the operation API.

use std::time::Duration;

use banger_api::{ErrorCode, Kernel, KernelPullRequest, Operation, OperationState};
use banger_client::Client;
use banger_testkit::bundles::{entry, fake_vmlinux, good_bundle, raw_bundle, Member};
use banger_testkit::{sha256_hex, Canned, HttpServer, TestDaemon};

async fn pull(client: &Client, name: &str, force: bool) -> Result<Operation, banger_client::ClientError> {
    let op = client.pull_kernel(&KernelPullRequest { name: name.into(), force }).await?;
    let done = tokio::time::timeout(Duration::from_secs(60), client.wait(&op.id, |_| {}))
        .await
        .expect("pull finishes within 60 s")?;
    Ok(done)
}

/// Pulls `name` and expects the operation to fail with `code`, leaving the
/// kernels directory as it was and the kernel absent.
async fn expect_failure(daemon: &TestDaemon, name: &str, code: ErrorCode, message_part: &str) {
    let before = daemon.kernel_dir_entries();
    let done = pull(&daemon.client, name, false).await.expect("pull starts");
    assert_eq!(done.state, OperationState::Failed, "{done:?}");
    let error = done.error.expect("a failed operation carries its error");
    eprintln!("{name}: {}", error.message);
    assert_eq!(error.code, code, "{}", error.message);
    assert!(error.message.contains(message_part), "message {:?} lacks {message_part:?}", error.message);
    assert_eq!(daemon.kernel_dir_entries(), before, "a failed pull must leave nothing behind");
    let missing = daemon.client.kernel(name).await.unwrap_err();
    assert_eq!(missing.api().map(|e| e.code), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn pull_round_trip_extracts_and_records_the_kernel() {
    let server = HttpServer::start().await;
    let daemon = TestDaemon::start().await;
    let bundle = good_bundle("round-trip");
    let url = server.route("/k.tar.zst", Canned::ok(bundle.clone()));
    daemon.set_catalog(vec![entry("k1", &url, &bundle)]);

    let listing = daemon.client.kernel_catalog().await.unwrap();
    let state = |l: &[banger_api::CatalogListing]| l.iter().find(|l| l.entry.name == "k1").unwrap().state;
    assert_eq!(state(&listing), banger_api::CatalogEntryState::Available);

    let op = daemon.client.pull_kernel(&KernelPullRequest { name: "k1".into(), force: false }).await.unwrap();
    assert_eq!(op.state, OperationState::Running);
    // The pull may be done before `wait` subscribes: its first state counts too.
    let mut seen_download_progress = op.progress.step == "download";
    let done = daemon.client.wait(&op.id, |o| seen_download_progress |= o.progress.step == "download").await.unwrap();
    assert_eq!(done.state, OperationState::Succeeded, "{:?}", done.error);
    assert!(seen_download_progress);
    let kernel: Kernel = done.result.and_then(banger_api::OperationResult::into_kernel).expect("a kernel");

    let dir = daemon.state_dir().join("kernels/k1");
    let vmlinux = std::fs::read(dir.join("vmlinux")).unwrap();
    assert_eq!(vmlinux, fake_vmlinux("round-trip"));
    assert_eq!(kernel.vmlinux_sha256, sha256_hex(&vmlinux));
    assert_eq!(kernel.source, banger_api::KernelSource::Pull(url.clone()));
    assert_eq!(kernel.kernel_version.as_deref(), Some("6.1.0-test"));
    assert!(kernel.has_initrd);
    assert_eq!(std::fs::read(dir.join("modules/6.1.0-test/kernel/virtio_blk.ko")).unwrap(), b"module");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["vmlinux_sha256"], kernel.vmlinux_sha256.as_str());
    assert_eq!(manifest["source"], format!("pull:{url}"), "the manifest keeps the text form");

    assert_eq!(daemon.client.kernels().await.unwrap(), vec![kernel.clone()]);
    assert_eq!(daemon.client.kernel("k1").await.unwrap(), kernel);
    let listing = daemon.client.kernel_catalog().await.unwrap();
    assert_eq!(state(&listing), banger_api::CatalogEntryState::Pulled);
    assert_eq!(daemon.kernel_dir_entries(), ["k1"], "no staging directory is left");
}

#[tokio::test]
async fn pull_refuses_to_overwrite_without_force_and_replaces_with_it() {
    let server = HttpServer::start().await;
    let daemon = TestDaemon::start().await;
    let first = good_bundle("first");
    let url = server.route("/k.tar.zst", Canned::ok(first.clone()));
    daemon.set_catalog(vec![entry("k", &url, &first)]);
    assert_eq!(pull(&daemon.client, "k", false).await.unwrap().state, OperationState::Succeeded);

    let again = daemon.client.pull_kernel(&KernelPullRequest { name: "k".into(), force: false }).await.unwrap_err();
    let api = again.api().expect("an API error");
    assert_eq!(api.code, ErrorCode::AlreadyExists);
    assert!(api.message.contains("--force"), "{}", api.message);

    let second = good_bundle("second");
    let url = server.route("/k2.tar.zst", Canned::ok(second.clone()));
    daemon.set_catalog(vec![entry("k", &url, &second)]);
    let done = pull(&daemon.client, "k", true).await.unwrap();
    assert_eq!(done.state, OperationState::Succeeded, "{:?}", done.error);
    let vmlinux = std::fs::read(daemon.state_dir().join("kernels/k/vmlinux")).unwrap();
    assert_eq!(vmlinux, fake_vmlinux("second"));
    assert_eq!(daemon.kernel_dir_entries(), ["k"]);
}

#[tokio::test]
async fn pull_rejects_bad_bundles_and_leaves_nothing() {
    let server = HttpServer::start().await;
    let daemon = TestDaemon::start_with(|c| c.max_bundle_bytes = 256 * 1024).await;
    let elf = fake_vmlinux("x");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no-vmlinux", raw_bundle(&[Member::File("initrd.img", b"x")])),
        ("traversal", raw_bundle(&[Member::File("vmlinux", &elf), Member::File("../escaped", b"x")])),
        ("deep-traversal", raw_bundle(&[Member::File("vmlinux", &elf), Member::File("a/../../escaped", b"x")])),
        ("absolute", raw_bundle(&[Member::File("vmlinux", &elf), Member::File("/tmp/banger-escaped", b"x")])),
        ("symlink", raw_bundle(&[Member::File("vmlinux", &elf), Member::Symlink("modules", "../../..")])),
        ("abs-symlink", raw_bundle(&[Member::File("vmlinux", &elf), Member::Symlink("etc", "/etc")])),
        ("through-link", raw_bundle(&[Member::Dir("d"), Member::Symlink("l", "d"), Member::File("l/vmlinux", &elf)])),
        ("oversize", raw_bundle(&[Member::File("vmlinux", &elf), Member::File("big", &vec![7u8; 512 * 1024])])),
    ];
    let mut entries = Vec::new();
    for (name, bundle) in &cases {
        let url = server.route(&format!("/{name}.tar.zst"), Canned::ok(bundle.clone()));
        entries.push(entry(name, &url, bundle));
    }
    daemon.set_catalog(entries);

    expect_failure(&daemon, "no-vmlinux", ErrorCode::BadArchive, "no vmlinux").await;
    expect_failure(&daemon, "traversal", ErrorCode::BadArchive, "escapes").await;
    expect_failure(&daemon, "deep-traversal", ErrorCode::BadArchive, "escapes").await;
    expect_failure(&daemon, "absolute", ErrorCode::BadArchive, "absolute path").await;
    expect_failure(&daemon, "symlink", ErrorCode::BadArchive, "symlink points outside").await;
    expect_failure(&daemon, "abs-symlink", ErrorCode::BadArchive, "symlink points outside").await;
    expect_failure(&daemon, "through-link", ErrorCode::BadArchive, "through a symlink").await;
    expect_failure(&daemon, "oversize", ErrorCode::TooLarge, "larger than the limit").await;
    assert!(!std::path::Path::new("/tmp/banger-escaped").exists());
    assert!(!daemon.state_dir().join("escaped").exists());
    assert_eq!(daemon.kernel_dir_entries(), Vec::<String>::new());
}

#[tokio::test]
async fn pull_reports_download_failures() {
    let server = HttpServer::start().await;
    let daemon = TestDaemon::start().await;
    let bundle = good_bundle("dl");
    let mut wrong_sha = entry("wrong-sha", &server.route("/ok.tar.zst", Canned::ok(bundle.clone())), &bundle);
    wrong_sha.tarball_sha256 = sha256_hex(b"something else");
    let truncated = Canned { declared_len: Some(bundle.len()), ..Canned::ok(bundle[..bundle.len() / 2].to_vec()) };
    daemon.set_catalog(vec![
        wrong_sha,
        entry("missing", &server.route("/missing.tar.zst", Canned::status(404)), &bundle),
        entry("broken", &server.route("/broken.tar.zst", Canned::status(500)), &bundle),
        entry("truncated", &server.route("/truncated.tar.zst", truncated), &bundle),
    ]);

    expect_failure(&daemon, "wrong-sha", ErrorCode::ChecksumMismatch, "checksum mismatch").await;
    expect_failure(&daemon, "missing", ErrorCode::DownloadFailed, "404").await;
    expect_failure(&daemon, "broken", ErrorCode::DownloadFailed, "500").await;
    expect_failure(&daemon, "truncated", ErrorCode::DownloadFailed, "download of").await;
    assert_eq!(daemon.kernel_dir_entries(), Vec::<String>::new());
}

#[tokio::test]
async fn pull_of_an_unknown_name_is_not_found() {
    let daemon = TestDaemon::start().await;
    let error = daemon.client.pull_kernel(&KernelPullRequest { name: "nope".into(), force: false }).await.unwrap_err();
    let api = error.api().unwrap();
    assert_eq!(api.code, ErrorCode::NotFound);
    assert!(api.message.contains("no kernel named \"nope\""), "{}", api.message);
    let bad = daemon.client.pull_kernel(&KernelPullRequest { name: "../x".into(), force: false }).await.unwrap_err();
    assert_eq!(bad.api().unwrap().code, ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn concurrent_pulls_of_one_name_one_wins() {
    let server = HttpServer::start().await;
    let daemon = TestDaemon::start().await;
    let bundle = good_bundle("race");
    let slow = Canned { stall: Some(Duration::from_millis(500)), ..Canned::ok(bundle.clone()) };
    daemon.set_catalog(vec![entry("race", &server.route("/race.tar.zst", slow), &bundle)]);

    let request = KernelPullRequest { name: "race".into(), force: true };
    let (a, b) = tokio::join!(daemon.client.pull_kernel(&request), daemon.client.pull_kernel(&request));
    let (winner, loser) = match (a, b) {
        (Ok(op), Err(e)) | (Err(e), Ok(op)) => (op, e),
        other => panic!("expected exactly one pull to start, got {other:?}"),
    };
    let api = loser.api().expect("an API error");
    assert_eq!(api.code, ErrorCode::Conflict);
    assert!(api.message.contains("busy"), "{}", api.message);

    let done = daemon.client.wait(&winner.id, |_| {}).await.unwrap();
    assert_eq!(done.state, OperationState::Succeeded, "{:?}", done.error);
    let vmlinux = std::fs::read(daemon.state_dir().join("kernels/race/vmlinux")).unwrap();
    assert_eq!(vmlinux, fake_vmlinux("race"));
    assert_eq!(daemon.kernel_dir_entries(), ["race"]);
}
