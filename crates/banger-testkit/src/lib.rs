//! Test support shared by the daemon's and the CLI's tests: a whole
//! `bangerd` in-process under a temporary state root, a real HTTP server on
//! 127.0.0.1 that serves canned responses (bundles, errors, truncated
//! bodies), and builders for kernel bundles, good and malicious.

pub mod bundles;
pub mod daemon;
pub mod debian;
pub mod guest;
pub mod http;
pub mod loopfs;

pub use daemon::TestDaemon;
pub use http::{Canned, HttpServer};

/// SHA-256 of bytes, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}
