//! Requests that name VMs which do not exist leave nothing behind in the
//! daemon: its memory stays flat however many there are and however long
//! the names.

use banger_api::ErrorCode;
use banger_testkit::DaemonProcess;

#[tokio::test]
async fn thousands_of_requests_for_missing_vms_leave_memory_flat() {
    let mut daemon = DaemonProcess::start(env!("CARGO_BIN_EXE_bangerd").as_ref(), "").await;
    let client = &daemon.client;
    let name = |i: usize| format!("{i}-{}", "x".repeat(32 * 1024));
    // Warm up allocator arenas and lazily built state first.
    for i in 0..100 {
        let _ = client.stop_vm(&name(i), true).await;
    }
    let before = daemon.rss_kib();
    let started = std::time::Instant::now();
    for i in 0..3000 {
        let name = name(i);
        let error = match i % 4 {
            0 => client.stop_vm(&name, true).await.map(drop),
            1 => client.stop_vm(&name, false).await.map(drop),
            2 => client.remove_vm(&name, true).await.map(drop),
            _ => client.exec(&name, &["true"], b"").await.map(drop),
        }
        .expect_err("no such VM");
        assert_eq!(error.api().map(|e| e.code), Some(ErrorCode::NotFound), "{error}");
    }
    let after = daemon.rss_kib();
    eprintln!(
        "3000 requests with 32 KiB names in {:.2?}: RSS {before} KiB before, {after} KiB after",
        started.elapsed()
    );
    assert!(after < before + 20 * 1024, "RSS grew from {before} KiB to {after} KiB");
    assert!(daemon.terminate().success());
}
