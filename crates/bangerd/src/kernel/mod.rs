//! Kernels: the store, catalogs, pulls and imports.

pub mod catalog;
pub mod fetch;
pub mod import;
pub mod resolve;
pub mod store;
