//! Every request the Firecracker driver can send validates against
//! Firecracker's own API description, and the validator used for that
//! rejects what Firecracker would reject.

mod firecracker_openapi;

use std::path::PathBuf;

use banger_vmm::firecracker::{requests, ActionType, ApiRequest};
use banger_vmm::{DiskSpec, NicSpec, VmSpec};
use firecracker_openapi::OpenApi;
use serde_json::json;

fn representative_spec() -> VmSpec {
    VmSpec {
        name: "web-1".into(),
        run_dir: "/run/banger/vms/web-1".into(),
        kernel: "/var/lib/banger/kernels/debian/vmlinux".into(),
        initrd: Some("/var/lib/banger/kernels/debian/initrd.img".into()),
        cmdline: "root=/dev/vda rw init=/sbin/banger-agent".into(),
        cpus: 2,
        memory_mib: 1024,
        disks: vec![
            DiskSpec { path: "/var/lib/banger/vms/web-1/root.ext4".into(), read_only: false },
            DiskSpec { path: "/var/lib/banger/vms/web-1/work.ext4".into(), read_only: false },
            DiskSpec { path: "/var/lib/banger/images/tools.ext4".into(), read_only: true },
        ],
        nics: vec![
            NicSpec { tap: "tap-web-1".into(), mac: [0x02, 0x42, 0x0a, 0xd5, 0x00, 0x05] },
            NicSpec { tap: "tap-web-1b".into(), mac: [0x02, 0x42, 0x0a, 0xd5, 0x00, 0x06] },
        ],
    }
}

fn every_request() -> Vec<ApiRequest> {
    let mut all = requests(&representative_spec()).unwrap();
    all.push(ApiRequest::action(ActionType::SendCtrlAltDel));
    all.push(ApiRequest::action(ActionType::FlushMetrics));
    all
}

#[test]
fn every_request_validates_against_firecrackers_api() {
    let api = OpenApi::load();
    for request in every_request() {
        let body = request.body();
        api.validate_request(request.method(), &request.path(), Some(&body))
            .unwrap_or_else(|e| panic!("{} {body} is invalid: {e}", request.describe()));
    }
}

#[test]
fn requests_are_sent_in_boot_order() {
    let sent: Vec<String> = requests(&representative_spec()).unwrap().iter().map(ApiRequest::describe).collect();
    assert_eq!(
        sent,
        [
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /drives/disk1",
            "PUT /drives/disk2",
            "PUT /network-interfaces/eth0",
            "PUT /network-interfaces/eth1",
            "PUT /vsock",
            "PUT /actions",
        ]
    );
}

#[test]
fn request_bodies_carry_the_spec() {
    let spec = representative_spec();
    let bodies: Vec<_> = requests(&spec).unwrap().iter().map(ApiRequest::body).collect();
    assert_eq!(bodies[0], json!({"metrics_path": "/run/banger/vms/web-1/metrics.json"}));
    assert_eq!(bodies[1], json!({"vcpu_count": 2, "mem_size_mib": 1024, "smt": false}));
    assert_eq!(
        bodies[2],
        json!({
            "kernel_image_path": "/var/lib/banger/kernels/debian/vmlinux",
            "initrd_path": "/var/lib/banger/kernels/debian/initrd.img",
            "boot_args": "root=/dev/vda rw init=/sbin/banger-agent console=ttyS0 reboot=k panic=1",
        })
    );
    // The spec names its root itself: Firecracker must not add another.
    assert_eq!(
        bodies[3],
        json!({
            "drive_id": "rootfs",
            "path_on_host": "/var/lib/banger/vms/web-1/root.ext4",
            "is_root_device": false,
            "is_read_only": false,
        })
    );
    assert_eq!(bodies[4]["is_root_device"], false);
    assert_eq!(
        bodies[5],
        json!({"drive_id": "disk2", "path_on_host": "/var/lib/banger/images/tools.ext4", "is_root_device": false, "is_read_only": true})
    );
    assert_eq!(bodies[6], json!({"iface_id": "eth0", "host_dev_name": "tap-web-1", "guest_mac": "02:42:0a:d5:00:05"}));
    assert_eq!(bodies[7]["guest_mac"], "02:42:0a:d5:00:06");
    assert_eq!(bodies[8], json!({"guest_cid": 3, "uds_path": "/run/banger/vms/web-1/vsock.sock"}));
    assert_eq!(bodies[9], json!({"action_type": "InstanceStart"}));
}

#[test]
fn vsock_request_matches_the_agent_endpoint() {
    let spec = representative_spec();
    let vmm = banger_vmm::Vmm::Firecracker(banger_vmm::firecracker::Firecracker::new("firecracker"));
    let banger_vmm::AgentEndpoint::FirecrackerVsock { uds, .. } = vmm.agent_endpoint(&spec.run_dir) else {
        panic!("Firecracker's agent endpoint is not vsock")
    };
    let vsock = requests(&spec).unwrap().into_iter().find(|r| r.path() == "/vsock").unwrap();
    assert_eq!(PathBuf::from(vsock.body()["uds_path"].as_str().unwrap()), uds);
}

// The validator itself: each case below is a mistake Firecracker would
// answer with 400, and must fail validation.

fn machine_config_error(body: serde_json::Value) -> String {
    OpenApi::load().validate_request("PUT", "/machine-config", Some(&body)).unwrap_err()
}

#[test]
fn validator_accepts_a_valid_body() {
    let api = OpenApi::load();
    let drive = json!({"drive_id": "rootfs", "path_on_host": "/a", "is_root_device": true, "cache_type": "Unsafe"});
    assert_eq!(api.validate_request("PUT", "/drives/rootfs", Some(&drive)), Ok(()));
}

#[test]
fn validator_rejects_a_network_interface_without_its_tap() {
    let api = OpenApi::load();
    let body = json!({"iface_id": "eth0", "guest_mac": "02:00:00:00:00:01"});
    let error = api.validate_request("PUT", "/network-interfaces/eth0", Some(&body)).unwrap_err();
    assert!(error.contains("host_dev_name"), "{error}");
    let body = json!({"iface_id": "eth0", "host_dev_name": "tap0", "mac": "02:00:00:00:00:01"});
    assert!(api.validate_request("PUT", "/network-interfaces/eth0", Some(&body)).is_err());
}

#[test]
fn validator_rejects_a_wrong_field_name() {
    let error = machine_config_error(json!({"vcpu_count": 1, "mem_size_mib": 128, "smt_enabled": false}));
    assert!(error.contains("unknown field smt_enabled"), "{error}");
}

#[test]
fn validator_rejects_a_wrong_type() {
    let error = machine_config_error(json!({"vcpu_count": "2", "mem_size_mib": 128}));
    assert!(error.contains("body.vcpu_count") && error.contains("integer"), "{error}");
    let error = machine_config_error(json!({"vcpu_count": 1.5, "mem_size_mib": 128}));
    assert!(error.contains("integer"), "{error}");
    let api = OpenApi::load();
    let drive = json!({"drive_id": "rootfs", "path_on_host": "/a", "is_root_device": "yes"});
    assert!(api.validate_request("PUT", "/drives/rootfs", Some(&drive)).unwrap_err().contains("boolean"));
}

#[test]
fn validator_rejects_a_missing_required_field() {
    let error = machine_config_error(json!({"vcpu_count": 1}));
    assert!(error.contains("missing required field mem_size_mib"), "{error}");
    let api = OpenApi::load();
    let error = api.validate_request("PUT", "/vsock", Some(&json!({"guest_cid": 3}))).unwrap_err();
    assert!(error.contains("uds_path"), "{error}");
    assert!(api.validate_request("PUT", "/actions", None).is_err(), "a required body may not be missing");
}

#[test]
fn validator_rejects_an_unknown_enum_value() {
    let api = OpenApi::load();
    let error = api.validate_request("PUT", "/actions", Some(&json!({"action_type": "Reboot"}))).unwrap_err();
    assert!(error.contains("\"Reboot\" is not one of"), "{error}");
    let error = api.validate_request("PUT", "/logger", Some(&json!({"level": "Verbose"}))).unwrap_err();
    assert!(error.contains("Verbose"), "{error}");
}

#[test]
fn validator_rejects_out_of_range_numbers() {
    let error = machine_config_error(json!({"vcpu_count": 64, "mem_size_mib": 128}));
    assert!(error.contains("maximum"), "{error}");
    let api = OpenApi::load();
    let error = api.validate_request("PUT", "/vsock", Some(&json!({"guest_cid": 2, "uds_path": "/v"}))).unwrap_err();
    assert!(error.contains("minimum"), "{error}");
}

#[test]
fn validator_rejects_unknown_paths_and_methods() {
    let api = OpenApi::load();
    assert!(api.validate_request("PUT", "/drive/rootfs", Some(&json!({}))).unwrap_err().contains("no path"));
    assert!(api.validate_request("PUT", "/drives/", Some(&json!({}))).is_err());
    assert!(api.validate_request("DELETE", "/vsock", None).unwrap_err().contains("has no DELETE"));
}
