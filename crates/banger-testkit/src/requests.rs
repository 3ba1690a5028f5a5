//! The requests the daemon's tests make again and again, with the defaults
//! they share, and following an operation to its end.

use std::time::Duration;

use banger_api::{ImageBuildRequest, ImageRecipe, Operation, OperationResult, OperationState, VmCreateRequest};
use banger_client::Client;

/// How long an operation a test waits for may take at most: a bound for a
/// hung one, not a speed check.
const OPERATION_LIMIT: Duration = Duration::from_secs(240);

/// A tiny image `name` built for `kernel`.
pub fn tiny_image(name: &str, kernel: &str) -> ImageBuildRequest {
    ImageBuildRequest {
        name: name.into(),
        recipe: Some(ImageRecipe::Tiny),
        from_dir: None,
        from_tar: None,
        kernel: kernel.into(),
        size_bytes: None,
        force: false,
    }
}

/// A VM `name` of `image` with 128 MiB of memory, started when made; change
/// the rest with `VmCreateRequest { field: value, ..vm(name, image) }`.
pub fn vm(name: &str, image: &str) -> VmCreateRequest {
    VmCreateRequest {
        name: name.into(),
        image: image.into(),
        kernel: None,
        cpus: None,
        memory_mib: Some(128),
        disk_size_bytes: None,
        work_disk_bytes: None,
        vmm: None,
        no_start: false,
        network: None,
    }
}

/// Waits for `op` to end, whatever its end.
pub async fn finished(client: &Client, op: Operation) -> Operation {
    tokio::time::timeout(OPERATION_LIMIT, client.wait(&op.id, |_| {}))
        .await
        .expect("the operation finishes in time")
        .expect("the operation can be followed")
}

/// Waits for `op` to succeed, and returns its result.
pub async fn succeed(client: &Client, op: Operation) -> Option<OperationResult> {
    let done = finished(client, op).await;
    assert_eq!(done.state, OperationState::Succeeded, "{:?} {} failed: {:?}", done.kind, done.target, done.error);
    done.result
}
