//! Events the daemon streams: operation progress and object changes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Operation;

crate::open_enum::open_enum! {
    /// The kinds of object events speak of.
    ///
    /// The set grows with the daemon (snapshots, say): a kind this crate
    /// does not know decodes as `Unknown`, so an old client still reads the
    /// rest of the stream.
    pub enum ObjectKind {
        /// A kernel in the local store.
        Kernel = "kernel",
        /// An image in the local store.
        Image = "image",
        /// A VM.
        Vm = "vm",
    }
}

/// Something that happened in the daemon, as `GET /v1/events` streams it.
///
/// The set of event types grows: clients skip a type they do not know.
/// Here it decodes as `Unknown` (its fields dropped), which
/// `banger_client::EventStream` skips.
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
    /// An event type this crate does not know, sent by a newer daemon. The
    /// daemon itself never sends it, and it cannot be encoded (so the
    /// document does not list it).
    #[serde(other, skip_serializing)]
    Unknown,
}
