//! The daemon as a whole: socket, single instance, OpenAPI document,
//! events, and what survives a restart.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use banger_api::{ErrorCode, Event, KernelPullRequest, ObjectKind, OperationState};
use banger_testkit::bundles::{entry, good_bundle};
use banger_testkit::{Canned, HttpServer, TestDaemon};

#[tokio::test]
async fn health_socket_mode_and_single_instance() {
    let daemon = TestDaemon::start().await;
    let health = daemon.client.health().await.unwrap();
    assert_eq!(health.api, "v1");
    assert_eq!(health.state_dir, daemon.state_dir().display().to_string());
    let mode = std::fs::metadata(&daemon.config.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");

    let mut second = daemon.config.clone();
    second.socket = daemon.root.path().join("other.sock");
    match bangerd::prepare(second).await {
        Err(bangerd::StartError::AlreadyRunning(dir)) => assert_eq!(dir, daemon.config.state_dir),
        Err(other) => panic!("expected AlreadyRunning, got {other}"),
        Ok(_) => panic!("a second daemon took the same state root"),
    }
}

#[tokio::test]
async fn a_run_dir_is_never_shared() {
    let daemon = TestDaemon::start().await;
    let mut other = daemon.config.clone();
    other.state_dir = daemon.root.path().join("other-state");
    other.socket = daemon.root.path().join("other.sock");
    match bangerd::prepare(other).await {
        Err(bangerd::StartError::RunDirInUse(dir)) => assert_eq!(dir, daemon.config.run_dir),
        Err(other) => panic!("expected RunDirInUse, got {other}"),
        Ok(_) => panic!("a second daemon took a run directory in use"),
    }
}

#[tokio::test]
async fn a_live_socket_is_not_stolen() {
    let daemon = TestDaemon::start().await;
    let mut other = daemon.config.clone();
    other.state_dir = daemon.root.path().join("other-state");
    other.run_dir = daemon.root.path().join("other-run");
    match bangerd::prepare(other).await {
        Err(bangerd::StartError::SocketInUse(path)) => assert_eq!(path, daemon.config.socket),
        Err(other) => panic!("expected SocketInUse, got {other}"),
        Ok(_) => panic!("a second daemon took a live socket"),
    }
    daemon.client.health().await.expect("the first daemon still answers");
}

/// Every route the daemon serves, as (method, path). Adding a route means
/// adding it here, and the document must list it.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/health"),
    ("get", "/v1/doctor"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/operations"),
    ("get", "/v1/operations/{id}"),
    ("get", "/v1/events"),
    ("get", "/v1/kernels"),
    ("get", "/v1/kernels/catalog"),
    ("post", "/v1/kernels/pull"),
    ("post", "/v1/kernels/import"),
    ("get", "/v1/kernels/{name}"),
    ("delete", "/v1/kernels/{name}"),
    ("get", "/v1/kernels/{name}/bundle"),
    ("get", "/v1/images"),
    ("post", "/v1/images/build"),
    ("post", "/v1/images/register"),
    ("post", "/v1/images/prune"),
    ("get", "/v1/images/{name}"),
    ("delete", "/v1/images/{name}"),
    ("get", "/v1/vms"),
    ("post", "/v1/vms"),
    ("get", "/v1/vms/{name}"),
    ("delete", "/v1/vms/{name}"),
    ("patch", "/v1/vms/{name}"),
    ("post", "/v1/vms/{name}/start"),
    ("post", "/v1/vms/{name}/stop"),
    ("post", "/v1/vms/{name}/restart"),
    ("post", "/v1/vms/{name}/kill"),
    ("post", "/v1/vms/{name}/disk/resize"),
    ("get", "/v1/vms/{name}/logs"),
    ("get", "/v1/vms/{name}/exec"),
    ("get", "/v1/vms/{name}/files"),
    ("get", "/v1/vms/{name}/stats"),
    ("get", "/v1/vms/{name}/ports"),
    ("get", "/v1/vms/{name}/sessions"),
    ("post", "/v1/vms/{name}/sessions"),
    ("get", "/v1/vms/{name}/sessions/{session}"),
    ("delete", "/v1/vms/{name}/sessions/{session}"),
    ("post", "/v1/vms/{name}/sessions/{session}/send"),
    ("post", "/v1/vms/{name}/sessions/{session}/stop"),
    ("post", "/v1/vms/{name}/sessions/{session}/wait"),
    ("get", "/v1/vms/{name}/sessions/{session}/attach"),
    ("get", "/v1/vms/{name}/sessions/{session}/logs"),
    ("get", "/v1/vms/{name}/connect"),
    ("get", "/v1/vms/{name}/forwards"),
    ("post", "/v1/vms/{name}/forwards"),
    ("delete", "/v1/vms/{name}/forwards/{host_port}"),
    ("get", "/v1/ssh"),
    ("post", "/v1/ssh/authorized-keys"),
];

#[tokio::test]
async fn openapi_document_is_valid_and_lists_every_route() {
    let daemon = TestDaemon::start().await;
    let document = daemon.client.openapi().await.unwrap();
    let text = serde_json::to_string(&document).unwrap();
    let spec = oas3::from_json(&text).expect("a valid OpenAPI 3.1 document");
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);

    let mut documented = BTreeSet::new();
    for (path, item) in spec.paths.clone().unwrap_or_default() {
        for (method, operation) in item.methods() {
            assert!(operation.responses.as_ref().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
            documented.insert((method.as_str().to_lowercase(), path.clone()));
        }
    }
    let expected: BTreeSet<_> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, expected);

    // Every schema reference resolves.
    let schemas = &document["components"]["schemas"];
    for reference in find_refs(&document) {
        let name = reference.strip_prefix("#/components/schemas/").expect("local schema ref");
        assert!(schemas.get(name).is_some(), "dangling $ref {reference}");
    }

    // Open enums tell clients a newer daemon may send other values, and the
    // clients' own `unknown` fallback is never listed as something sent.
    assert!(schemas["VmState"]["anyOf"].is_array(), "VmState is open: {}", schemas["VmState"]);
    assert!(schemas["OperationState"]["enum"].is_array(), "OperationState is closed: {}", schemas["OperationState"]);
    assert!(!text.contains("\"unknown\""), "the document lists a fallback as a value");

    // And every documented GET without parameters answers.
    for (method, path) in ROUTES {
        if *method == "get" && !path.contains('{') && *path != "/v1/events" {
            daemon.client.openapi_get(path).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        }
    }
}

fn find_refs(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| match (k.as_str(), v) {
                ("$ref", serde_json::Value::String(r)) => vec![r.clone()],
                _ => find_refs(v),
            })
            .collect(),
        serde_json::Value::Array(items) => items.iter().flat_map(find_refs).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn events_announce_operations_and_objects() {
    let server = HttpServer::start().await;
    let daemon = TestDaemon::start().await;
    let bundle = good_bundle("events");
    daemon.set_catalog(vec![entry("ev", &server.route("/ev.tar.zst", Canned::ok(bundle.clone())), &bundle)]);

    let mut events = daemon.client.events(None).await.unwrap();
    let op = daemon.client.pull_kernel(&KernelPullRequest { name: "ev".into(), force: false }).await.unwrap();
    let mut states = Vec::new();
    let created = loop {
        match next(&mut events).await {
            Event::Operation { operation } => {
                assert_eq!(operation.id, op.id);
                states.push(operation.state);
            }
            other => break other,
        }
    };
    assert_eq!(states.first(), Some(&OperationState::Running));
    assert_eq!(states.last(), Some(&OperationState::Succeeded));
    assert_eq!(created, Event::Created { kind: ObjectKind::Kernel, name: "ev".into() });

    daemon.client.remove_kernel("ev", false).await.unwrap();
    assert_eq!(next(&mut events).await, Event::Deleted { kind: ObjectKind::Kernel, name: "ev".into() });
    assert_eq!(daemon.kernel_dir_entries(), Vec::<String>::new());
    let gone = daemon.client.remove_kernel("ev", false).await.unwrap_err();
    assert_eq!(gone.api().unwrap().code, ErrorCode::NotFound);
}

#[tokio::test]
async fn restart_keeps_kernels_and_history_and_reconciles_the_disk() {
    let server = HttpServer::start().await;
    let mut daemon = TestDaemon::start().await;
    let a = good_bundle("a");
    let b = good_bundle("b");
    daemon.set_catalog(vec![
        entry("keep", &server.route("/a.tar.zst", Canned::ok(a.clone())), &a),
        entry("lose", &server.route("/b.tar.zst", Canned::ok(b.clone())), &b),
    ]);
    for name in ["keep", "lose"] {
        let op = daemon.client.pull_kernel(&KernelPullRequest { name: name.into(), force: false }).await.unwrap();
        assert_eq!(daemon.client.wait(&op.id, |_| {}).await.unwrap().state, OperationState::Succeeded);
    }
    let ops_before = daemon.client.operations().await.unwrap();
    daemon.stop().await;
    assert!(!daemon.config.socket.exists(), "the socket is removed on shutdown");

    // While it is down: a kernel's files vanish, a crashed pull leaves a
    // staging directory, and a kernel directory appears with its manifest
    // but no database row.
    let kernels = daemon.state_dir().join("kernels");
    std::fs::remove_dir_all(kernels.join("lose")).unwrap();
    std::fs::create_dir_all(kernels.join(".tmp-half-op-123/modules")).unwrap();
    copy_dir(&kernels.join("keep"), &kernels.join("found"));
    let manifest = std::fs::read_to_string(kernels.join("found/manifest.json")).unwrap();
    std::fs::write(kernels.join("found/manifest.json"), manifest.replace("\"keep\"", "\"found\"")).unwrap();

    daemon.restart().await;
    let names: Vec<String> = daemon.client.kernels().await.unwrap().into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["found", "keep"]);
    assert_eq!(daemon.kernel_dir_entries(), ["found", "keep"]);
    let ops_after = daemon.client.operations().await.unwrap();
    assert_eq!(ops_after, ops_before, "operation history survives a restart");
}

async fn next(events: &mut banger_client::EventStream) -> Event {
    let event = tokio::time::timeout(Duration::from_secs(30), events.next()).await;
    event.expect("an event within 30 s").expect("a readable stream").expect("the stream is open")
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A config that forces Firecracker is what doctor reports, not the
/// host's own preference.
#[tokio::test]
async fn doctor_honours_the_configured_vmm() {
    let daemon = TestDaemon::start_with(|config| config.vmm = Some(banger_api::VmmChoice::Firecracker)).await;
    let report = daemon.client.doctor().await.unwrap();
    let vmm = report.checks.iter().find(|c| c.name == "vmm").unwrap();
    assert!(
        vmm.detail.starts_with("Firecracker will be used because the config forces it")
            || vmm.detail.starts_with("Firecracker will be used: the config forces it")
            || vmm.detail.starts_with("Firecracker would be used (the config forces it"),
        "{vmm:?}"
    );
    let daemon = TestDaemon::start_with(|config| config.vmm = Some(banger_api::VmmChoice::Qemu)).await;
    let report = daemon.client.doctor().await.unwrap();
    let vmm = report.checks.iter().find(|c| c.name == "vmm").unwrap();
    assert!(vmm.detail.contains("QEMU") && vmm.detail.contains("the config forces it"), "{vmm:?}");
}

#[tokio::test]
async fn doctor_reports_every_check() {
    let daemon = TestDaemon::start().await;
    let report = daemon.client.doctor().await.unwrap();
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    let want = [
        "kvm",
        "firecracker",
        "jailer",
        "qemu",
        "vsock",
        "vmm",
        "device_mapper",
        "reflink",
        "nftables",
        "resolved",
        "disk",
        "agent",
        "vm_network",
        "space_reserve",
    ];
    assert_eq!(names, want);
    for check in &report.checks {
        if check.status != banger_api::CheckStatus::Pass {
            assert!(check.fix.is_some(), "{} has no fix", check.name);
        }
    }
}
