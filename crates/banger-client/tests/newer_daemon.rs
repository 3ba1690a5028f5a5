//! A client built today, against a daemon from later: a real HTTP server on
//! a temporary unix socket answers with canned bodies that carry fields,
//! event types, operation kinds and error codes this crate does not know,
//! and the real client must still decode them.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use banger_api::{
    DiskStrategy, ErrorCode, Event, ObjectKind, OperationKind, OperationResult, OperationState, Timestamp, VmState,
};
use banger_client::{Client, ClientError};
use serde_json::{json, Value};

/// A VM as a later daemon sends it: with an address this crate has no field for.
fn vm(state: &str) -> Value {
    json!({
        "name": "dev", "state": state, "image": "tiny", "kernel": "k", "vmm": "qemu", "kvm": false,
        "cpus": 1, "memory_mib": 512, "disk_size_bytes": 1048576, "work_disk_bytes": null,
        "disk_strategy": "reflink", "pid": 4242, "agent": "answering", "agent_version": "0.9.0", "created_at": "2026-01-01T00:00:00Z",
        "address": "10.0.0.2"
    })
}

/// An operation as a later daemon sends it, with fields this crate has none for.
fn operation(id: &str, kind: &str, state: &str, result: Value) -> Value {
    json!({
        "id": id, "kind": kind, "target": "dev", "state": state,
        "progress": {"step": "boot", "steps_done": 1, "steps_total": 3, "bytes_done": 0, "bytes_total": null,
                     "eta_seconds": 4},
        "error": null, "result": result, "created_at": "2026-01-01T00:00:00Z",
        "finished_at": if state == "running" { Value::Null } else { json!("2026-01-01T00:00:07Z") },
        "cancellable": true
    })
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// An SSE body cut into chunks that split blocks and JSON mid-way, as a
/// socket may deliver it: unknown event types sit between known ones.
fn event_stream() -> Response {
    let data = |event: Value| format!("data: {event}\n\n");
    let blocks = [
        ": keep-alive\n\n".to_owned(),
        data(json!({"type": "created", "kind": "vm", "name": "dev"})),
        data(json!({"type": "vm_address", "name": "dev", "address": "10.0.0.2"})),
        data(json!({"type": "operation", "operation": operation("op-2", "vm_start", "running", Value::Null)})),
        data(json!({"type": "snapshot_progress", "snapshot": {"name": "s1", "percent": 40}})),
        data(json!({"type": "updated", "kind": "snapshot", "name": "s1"})),
        data(json!({"type": "operation", "operation": operation("op-2", "vm_start", "succeeded", vm("running"))})),
        data(json!({"type": "deleted", "kind": "vm", "name": "dev", "reason": "rm"})),
    ];
    let text = blocks.concat();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = text.as_bytes().chunks(37).map(|c| Ok(c.to_vec())).collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("a valid response")
}

fn newer_daemon() -> Router {
    Router::new()
        .route("/v1/vms/dev", get(|| async { json_response(StatusCode::OK, vm("running")) }))
        .route("/v1/vms", get(|| async { json_response(StatusCode::OK, json!([vm("hibernating")])) }))
        .route(
            "/v1/operations/op-1",
            get(|| async { json_response(StatusCode::OK, operation("op-1", "vm_create", "succeeded", vm("running"))) }),
        )
        .route(
            "/v1/operations/op-2",
            get(|| async { json_response(StatusCode::OK, operation("op-2", "vm_start", "running", Value::Null)) }),
        )
        .route(
            "/v1/operations",
            get(|| async {
                let snapshot = json!({"snapshot": "s1", "vm": "dev", "bytes": 123});
                json_response(StatusCode::OK, json!([operation("op-9", "snapshot_create", "succeeded", snapshot)]))
            }),
        )
        .route("/v1/events", get(|| async { event_stream() }))
        .route(
            "/v1/kernels/k",
            get(|| async {
                let body = json!({"code": "quota_exceeded", "message": "too many kernels", "retry_after_seconds": 30});
                json_response(StatusCode::TOO_MANY_REQUESTS, body)
            }),
        )
}

/// Serves the canned daemon on a fresh socket; the directory lives as long as the guard.
async fn serve() -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("bangerd.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind the socket");
    tokio::spawn(async move { axum::serve(listener, newer_daemon()).await });
    (Client::new(socket), dir)
}

async fn within<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), work).await.expect("the exchange ends in time")
}

#[tokio::test]
async fn a_vm_with_a_new_field_and_a_new_state_decodes() {
    within(async {
        let (client, _dir) = serve().await;
        let vm = client.vm("dev").await.expect("a VM with an unknown field decodes");
        assert_eq!((vm.name.as_str(), vm.state, vm.pid), ("dev", VmState::Running, Some(4242)));
        assert_eq!(vm.disk_strategy, DiskStrategy::Reflink);
        assert_eq!(vm.created_at, "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap());

        let vms = client.vms().await.expect("a VM in a state this crate does not know decodes");
        assert_eq!(vms.len(), 1);
        assert_eq!(vms[0].state, VmState::Unknown);
    })
    .await;
}

#[tokio::test]
async fn an_operation_with_new_fields_keeps_its_typed_result() {
    within(async {
        let (client, _dir) = serve().await;
        let op = client.operation("op-1").await.expect("an operation with unknown fields decodes");
        assert_eq!((op.kind, op.state), (OperationKind::VmCreate, OperationState::Succeeded));
        assert_eq!(op.progress.steps_total, 3);
        assert_eq!(op.finished_at, Some("2026-01-01T00:00:07Z".parse().unwrap()));
        let vm = op.result.and_then(OperationResult::into_vm).expect("the result is the VM");
        assert_eq!(vm.name, "dev");

        let ops = client.operations().await.expect("an operation of a kind this crate does not know decodes");
        assert_eq!(ops[0].kind, OperationKind::Unknown);
        assert_eq!(ops[0].result, Some(OperationResult::Other(json!({"snapshot": "s1", "vm": "dev", "bytes": 123}))));
    })
    .await;
}

#[tokio::test]
async fn the_event_stream_skips_event_types_it_does_not_know() {
    within(async {
        let (client, _dir) = serve().await;
        let mut events = client.events(None).await.expect("the stream opens");
        let mut seen = Vec::new();
        while let Some(event) = events.next().await.expect("the stream reads on past unknown events") {
            seen.push(event);
        }
        let summary: Vec<String> = seen
            .iter()
            .map(|event| match event {
                Event::Operation { operation } => format!("operation {:?}", operation.state),
                Event::Created { kind, name } => format!("created {kind:?} {name}"),
                Event::Updated { kind, name } => format!("updated {kind:?} {name}"),
                Event::Deleted { kind, name } => format!("deleted {kind:?} {name}"),
                Event::Unknown => "unknown".into(),
            })
            .collect();
        assert_eq!(
            summary,
            ["created Vm dev", "operation Running", "updated Unknown s1", "operation Succeeded", "deleted Vm dev"]
        );
        assert!(matches!(&seen[2], Event::Updated { kind: ObjectKind::Unknown, .. }));
    })
    .await;
}

#[tokio::test]
async fn waiting_follows_an_operation_past_unknown_events() {
    within(async {
        let (client, _dir) = serve().await;
        let mut states = Vec::new();
        let done = client.wait("op-2", |op| states.push(op.state)).await.expect("the operation is followed to its end");
        assert_eq!(done.state, OperationState::Succeeded);
        assert_eq!(states, [OperationState::Running, OperationState::Running, OperationState::Succeeded]);
        assert_eq!(done.result.and_then(OperationResult::into_vm).map(|vm| vm.state), Some(VmState::Running));
    })
    .await;
}

#[tokio::test]
async fn an_error_with_a_new_code_keeps_its_message() {
    within(async {
        let (client, _dir) = serve().await;
        let error = client.kernel("k").await.expect_err("the daemon answered 429");
        let ClientError::Api(api) = &error else { panic!("an API error, not {error:?}") };
        assert_eq!(api.code, ErrorCode::Unknown);
        assert_eq!(api.message, "too many kernels");
        assert_eq!(error.to_string(), "too many kernels");
    })
    .await;
}
