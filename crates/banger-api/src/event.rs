//! Events the daemon streams: operation progress and object changes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Operation;

/// The kinds of object events speak of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A kernel in the local store.
    Kernel,
    /// An image in the local store.
    Image,
    /// A VM.
    Vm,
}

/// Something that happened in the daemon, as `GET /v1/events` streams it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An operation started, progressed or finished.
    Operation {
        /// Its state now.
        operation: Operation,
    },
    /// An object was created.
    Created {
        /// Its kind.
        kind: ObjectKind,
        /// Its name.
        name: String,
    },
    /// An object changed (a VM's state, say).
    Updated {
        /// Its kind.
        kind: ObjectKind,
        /// Its name.
        name: String,
    },
    /// An object was deleted.
    Deleted {
        /// Its kind.
        kind: ObjectKind,
        /// Its name.
        name: String,
    },
}
