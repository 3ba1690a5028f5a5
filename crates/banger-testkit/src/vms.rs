//! Waiting for a VM to be as a test needs it, by the daemon's event stream
//! (every change to a VM is announced), never by polling on a clock.

use std::time::Duration;

use banger_api::{ErrorCode, Vm};
use banger_client::Client;

/// Waits up to `within` until VM `name` exists and satisfies `wanted`;
/// `what` names the condition in the panic when it never comes.
pub async fn wait_vm(client: &Client, name: &str, within: Duration, what: &str, wanted: impl Fn(&Vm) -> bool) -> Vm {
    // Subscribe before looking, so no change falls between the two.
    let mut events = client.events(None).await.expect("the event stream opens");
    let waited = tokio::time::timeout(within, async {
        loop {
            // A create's operation saves the record a moment after it starts.
            match client.vm(name).await {
                Ok(vm) if wanted(&vm) => return vm,
                Ok(_) => {}
                Err(e) if e.api().is_some_and(|e| e.code == ErrorCode::NotFound) => {}
                Err(e) => panic!("cannot look at {name}: {e}"),
            }
            events.next().await.expect("the event stream can be read").expect("the event stream stays open");
        }
    });
    waited.await.unwrap_or_else(|_| panic!("{name} never {what} within {within:?}"))
}
