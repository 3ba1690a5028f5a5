//! The growth rule, checked type by type: requests refuse what they do not
//! know; responses and events accept it.

use banger_api::{
    AgentStatus, ApiError, DiskResizeRequest, DiskStrategy, ErrorCode, Event, Image, ImageBuildRequest, ImageRecipe,
    ImageRegisterRequest, ImageSource, Kernel, KernelCatalog, KernelImportRequest, KernelPullRequest, KernelSource,
    ObjectKind, Operation, OperationKind, OperationResult, OperationState, Session, SessionExit, SessionStartRequest,
    SessionState, SessionStopRequest, Signal, Timestamp, Vm, VmCreateRequest, VmSetRequest, VmState, VmStats,
    VmmChoice,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Decodes `body` plus a field no version of the API has.
fn with_extra_field<T: DeserializeOwned>(mut body: Value) -> Result<T, serde_json::Error> {
    body.as_object_mut().expect("an object").insert("from_the_future".into(), json!(1));
    serde_json::from_value(body)
}

fn refuses_unknown_field<T: DeserializeOwned + std::fmt::Debug>(body: Value) {
    serde_json::from_value::<T>(body.clone()).unwrap_or_else(|e| panic!("{body} should decode: {e}"));
    let error = with_extra_field::<T>(body).expect_err("an unknown field should be refused");
    assert!(error.to_string().contains("unknown field `from_the_future`"), "{error}");
}

#[test]
fn requests_refuse_unknown_fields() {
    refuses_unknown_field::<KernelPullRequest>(json!({"name": "k"}));
    refuses_unknown_field::<KernelImportRequest>(json!({"name": "k", "path": "/boot/vmlinuz"}));
    refuses_unknown_field::<ImageBuildRequest>(json!({"name": "i", "recipe": "tiny", "kernel": "k"}));
    refuses_unknown_field::<ImageRegisterRequest>(json!({"name": "i", "rootfs": "/r.ext4", "kernel": "k"}));
    refuses_unknown_field::<VmCreateRequest>(json!({"name": "v", "image": "i"}));
    refuses_unknown_field::<VmSetRequest>(json!({"cpus": 2}));
    refuses_unknown_field::<DiskResizeRequest>(json!({"size_bytes": 1}));
    refuses_unknown_field::<KernelCatalog>(json!({"version": 1, "entries": []}));
    refuses_unknown_field::<SessionStartRequest>(json!({"argv": ["sh"], "env": {"K": "V"}}));
    refuses_unknown_field::<SessionStopRequest>(json!({"signal": "KILL"}));
}

#[test]
fn requests_refuse_unknown_values() {
    let vmm = serde_json::from_value::<VmCreateRequest>(json!({"name": "v", "image": "i", "vmm": "bochs"}));
    assert!(vmm.unwrap_err().to_string().contains("unknown vmm"));
    let recipe = serde_json::from_value::<ImageBuildRequest>(json!({"name": "i", "recipe": "alpine", "kernel": "k"}));
    assert!(recipe.is_err());
    let ok: VmCreateRequest = serde_json::from_value(json!({"name": "v", "image": "i", "vmm": "qemu"})).unwrap();
    assert_eq!(ok.vmm, Some(VmmChoice::Qemu));
}

fn vm_json() -> Value {
    json!({
        "name": "dev", "state": "running", "image": "tiny", "kernel": "k", "vmm": "qemu", "kvm": false,
        "cpus": 1, "memory_mib": 512, "disk_size_bytes": 1048576, "work_disk_bytes": null,
        "disk_strategy": "reflink", "pid": 42, "pause_reason": null, "agent": "answering", "agent_version": "0.1.0", "created_at": "2026-01-01T00:00:00Z"
    })
}

fn kernel_json() -> Value {
    json!({
        "name": "k", "kernel_version": "6.1.0", "vmlinux_sha256": "ab", "source": "pull:https://example.test/k.tar.zst",
        "size_bytes": 3, "has_initrd": true, "vmlinux_path": "/s/k/vmlinux", "initrd_path": "/s/k/initrd.img",
        "created_at": "2026-01-01T00:00:00Z"
    })
}

fn image_json() -> Value {
    json!({
        "name": "tiny", "kernel": "k", "source": "recipe:tiny", "init": "/init", "size_bytes": 7,
        "rootfs_path": "/s/images/tiny/rootfs.ext4", "created_at": "2026-01-01T00:00:00Z"
    })
}

#[test]
fn responses_accept_unknown_fields() {
    let vm: Vm = with_extra_field(vm_json()).unwrap();
    assert_eq!((vm.state, vm.disk_strategy), (VmState::Running, DiskStrategy::Reflink));
    let kernel: Kernel = with_extra_field(kernel_json()).unwrap();
    assert_eq!(kernel.source, KernelSource::Pull("https://example.test/k.tar.zst".into()));
    let image: Image = with_extra_field(image_json()).unwrap();
    assert_eq!(image.source, ImageSource::Recipe(ImageRecipe::Tiny));
    let error: ApiError = with_extra_field(json!({"code": "not_found", "message": "no"})).unwrap();
    assert_eq!(error.code, ErrorCode::NotFound);
    with_extra_field::<banger_api::Health>(json!({"version": "1", "api": "v1", "state_dir": "/s"})).unwrap();
    with_extra_field::<banger_api::DoctorReport>(json!({"checks": []})).unwrap();
    let session: Session = with_extra_field(json!({
        "name": "0", "command": ["sh"], "state": "hibernating", "started_at": "2026-01-01T00:00:00Z", "attached": 0
    }))
    .unwrap();
    assert_eq!(session.state, SessionState::Unknown);
    with_extra_field::<SessionExit>(json!({"exit_code": null, "signal": 9, "exit_status": 137})).unwrap();
    let stats = json!({
        "interval_ms": 250,
        "guest": {"uptime_secs": 1.0, "cpus": 1, "cpu_percent": 0.0, "load": [0.0, 0.0, 0.0],
            "memory": {"total_bytes": 1, "available_bytes": 1, "used_bytes": 0}, "disks": [], "net": []},
        "vmm": {"pid": 1, "cpu_percent": 0.0, "rss_bytes": 1}
    });
    with_extra_field::<VmStats>(stats).unwrap();
}

#[test]
fn signals_travel_as_names_or_numbers() {
    let stop: SessionStopRequest = serde_json::from_value(json!({"signal": "SIGKILL"})).unwrap();
    assert_eq!(stop.signal, Some(Signal::KILL));
    let stop: SessionStopRequest = serde_json::from_value(json!({"signal": 15})).unwrap();
    assert_eq!(serde_json::to_value(stop).unwrap(), json!({"signal": 15}));
    assert!(serde_json::from_value::<SessionStopRequest>(json!({"signal": "LOUDLY"})).is_err());
}

#[test]
fn response_enums_decode_values_they_do_not_know() {
    let mut vm = vm_json();
    vm["state"] = json!("hibernating");
    vm["vmm"] = json!("cloud_hypervisor");
    vm["disk_strategy"] = json!("qcow2_overlay");
    let vm: Vm = serde_json::from_value(vm).unwrap();
    assert_eq!((vm.state, vm.vmm, vm.disk_strategy), (VmState::Unknown, VmmChoice::Unknown, DiskStrategy::Unknown));
    let error: ApiError = serde_json::from_value(json!({"code": "quota_exceeded", "message": "m"})).unwrap();
    assert_eq!(error.code, ErrorCode::Unknown);
    let event: Event =
        serde_json::from_value(json!({"type": "vm_address", "name": "dev", "address": "10.0.0.2"})).unwrap();
    assert_eq!(event, Event::Unknown);
    let event: Event = serde_json::from_value(json!({"type": "created", "kind": "snapshot", "name": "s"})).unwrap();
    assert_eq!(event, Event::Created { kind: ObjectKind::Unknown, name: "s".into() });
}

#[test]
fn sources_keep_their_wire_form() {
    for text in
        ["recipe:tiny", "recipe:debian", "dir:/a:b", "tar:/t.tar.zst", "register:/r.ext4", "recipe:alpine", "oci:x"]
    {
        let source = ImageSource::from(text);
        assert_eq!(source.to_string(), text);
        assert_eq!(serde_json::to_value(&source).unwrap(), json!(text));
    }
    assert_eq!(ImageSource::from("dir:/a:b"), ImageSource::Dir("/a:b".into()));
    assert_eq!(ImageSource::from("recipe:alpine"), ImageSource::Other("recipe:alpine".into()));
    for text in ["pull:file:///k.tar.zst", "import:/boot/vmlinuz", "oci:x"] {
        assert_eq!(KernelSource::from(text).to_string(), text);
    }
    assert_eq!(KernelSource::from("pull:file:///k"), KernelSource::Pull("file:///k".into()));
}

fn operation_json(kind: &str, result: Value) -> Value {
    json!({
        "id": "op-1", "kind": kind, "target": "t", "state": "succeeded",
        "progress": {"step": "done", "steps_done": 2, "steps_total": 2, "bytes_done": 0, "bytes_total": null},
        "error": null, "result": result,
        "created_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:05Z"
    })
}

#[test]
fn operation_results_are_typed_and_keep_their_wire_form() {
    for (kind, result) in [("kernel_pull", kernel_json()), ("image_build", image_json()), ("vm_create", vm_json())] {
        let body = operation_json(kind, result);
        let op: Operation = serde_json::from_value(body.clone()).unwrap();
        let expected = match kind {
            "kernel_pull" => matches!(op.result, Some(OperationResult::Kernel(_))),
            "image_build" => matches!(op.result, Some(OperationResult::Image(_))),
            _ => matches!(op.result, Some(OperationResult::Vm(_))),
        };
        assert!(expected, "{kind}: {:?}", op.result);
        assert_eq!(serde_json::to_value(&op).unwrap(), body, "re-encoding {kind} changes nothing");
    }
    let op: Operation = serde_json::from_value(operation_json("snapshot_create", json!({"snapshot": "s1"}))).unwrap();
    assert_eq!(op.kind, OperationKind::Unknown);
    assert_eq!(op.state, OperationState::Succeeded);
    assert_eq!(op.result, Some(OperationResult::Other(json!({"snapshot": "s1"}))));
    let finished: Timestamp = "2026-01-01T00:00:05Z".parse().unwrap();
    assert_eq!(op.finished_at, Some(finished));
    assert!(op.created_at < finished);
}

#[test]
fn vm_result_with_new_fields_is_still_a_vm() {
    let mut vm = vm_json();
    vm["address"] = json!("10.0.0.2");
    let op: Operation = serde_json::from_value(operation_json("vm_start", vm)).unwrap();
    assert_eq!(op.result.and_then(OperationResult::into_vm).map(|vm| vm.name), Some("dev".into()));
}

/// Checks that every known value of an open enum keeps its wire name both
/// ways, and that `Unknown` encodes as "unknown" and decodes back.
macro_rules! assert_open_enum_round_trips {
    ($($ty:ty),+) => {$(
        for value in <$ty>::KNOWN {
            let wire = serde_json::to_value(value).unwrap();
            assert_eq!(wire, json!(value.as_str()), "{value:?}");
            assert_eq!(serde_json::from_value::<$ty>(wire).unwrap(), *value);
            assert_ne!(*value, <$ty>::Unknown);
        }
        assert_eq!(serde_json::to_value(<$ty>::Unknown).unwrap(), json!("unknown"));
        assert_eq!(<$ty>::from_wire("unknown"), <$ty>::Unknown);
        assert!(serde_json::from_value::<$ty>(json!(7)).is_err(), "a number is not a name");
    )+};
}

#[test]
fn open_enums_keep_their_wire_names() {
    assert_open_enum_round_trips!(
        ErrorCode,
        OperationKind,
        ObjectKind,
        VmState,
        VmmChoice,
        DiskStrategy,
        AgentStatus,
        SessionState
    );
    assert_eq!(serde_json::to_value(OperationKind::VmRemove).unwrap(), json!("vm_remove"));
    assert_eq!(serde_json::to_value(DiskStrategy::DmSnapshot).unwrap(), json!("dm_snapshot"));
}

#[test]
fn an_unknown_event_is_never_encoded() {
    // The daemon never sends one; the client skips them instead of passing them on.
    assert!(serde_json::to_string(&Event::Unknown).is_err());
}
