//! A daemon whose VMs run on the test driver (the real static agent as a
//! host process, no guest), with a kernel nothing boots (`k`) and the tiny
//! image: for tests of what the daemon does with a running agent.

use std::path::Path;
use std::time::Duration;

use banger_api::KernelImportRequest;
use banger_vmm::local::Local;
use bangerd::Config;

use crate::requests::{succeed, tiny_image};
use crate::TestDaemon;

/// The daemon, adjusted by `adjust`; `None` (a SKIP, or a failure under
/// CI) when not root, which building the image needs.
pub async fn local_daemon(agent: &Path, adjust: impl FnOnce(&mut Config)) -> Option<TestDaemon> {
    if !crate::require("root, to build images", crate::is_root()) {
        return None;
    }
    let daemon = TestDaemon::start_with(|c| {
        c.agent_binary = Some(agent.to_owned());
        c.test_driver = Some(Local::new(agent));
        c.boot_timeout = Duration::from_secs(5);
        adjust(c);
    })
    .await;
    let vmlinux = daemon.root.path().join("vmlinux");
    std::fs::write(&vmlinux, crate::bundles::fake_vmlinux("local")).unwrap();
    let import = KernelImportRequest {
        name: "k".into(),
        path: vmlinux.display().to_string(),
        kind: None,
        modules_dir: None,
        force: false,
    };
    succeed(&daemon.client, daemon.client.import_kernel(&import).await.unwrap()).await;
    succeed(&daemon.client, daemon.client.build_image(&tiny_image("tiny", "k")).await.unwrap()).await;
    Some(daemon)
}
