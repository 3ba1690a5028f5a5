//! The kernel store's pure work: catalogs, `.tar.zst` kernel bundles (made
//! and safely extracted), and imports from a vmlinux, a bzImage, a Debian
//! package or a modules directory, with the initramfs a distribution kernel
//! needs to boot as a guest. Nothing here knows about the daemon.

pub mod bundle;
pub mod catalog;
pub mod import;
