//! One file per command group.

pub mod attach;
pub mod completions;
pub mod cp;
pub mod daemon;
pub mod doctor;
pub mod exec;
pub mod image;
pub mod kernel;
pub mod operation;
pub mod ports;
pub mod session;
pub mod ssh;
pub mod stats;
pub mod vm;
