//! Test support shared by the daemon's and the CLI's tests: a whole
//! `bangerd` in-process under a temporary state root, a real HTTP server on
//! 127.0.0.1 that serves canned responses (bundles, errors, truncated
//! bodies), builders for kernel bundles, good and malicious, Debian's
//! cloud kernel imported once per run, and the rules every host-dependent
//! test follows: [`require`] (skip locally, fail under CI) and
//! [`with_timeout`].

pub mod bundles;
pub mod cache;
pub mod daemon;
pub mod debian;
pub mod guest;
pub mod http;
pub mod local;
pub mod loopfs;
pub mod prereq;
pub mod process;
pub mod requests;
pub mod shared_kernel;
pub mod vms;

pub use daemon::TestDaemon;
pub use http::{Canned, HttpServer};
pub use local::local_daemon;
pub use prereq::{in_ci, is_root, require, with_timeout, with_timeout_blocking};
pub use process::DaemonProcess;
pub use shared_kernel::{debian_kernel, SharedKernel};
pub use vms::wait_vm;

/// SHA-256 of bytes, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}
