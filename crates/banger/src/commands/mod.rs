//! One file per command group.

pub mod completions;
pub mod daemon;
pub mod doctor;
pub mod kernel;
pub mod operation;
