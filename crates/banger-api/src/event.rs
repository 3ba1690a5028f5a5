//! Events the daemon streams: operation progress and object changes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Operation;

/// The kinds of object events speak of.
///
/// The set grows with the daemon (snapshots, say): a kind this crate does
/// not know decodes as [`ObjectKind::Unknown`], so an old client still reads
/// the rest of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A kernel in the local store.
    Kernel,
    /// An image in the local store.
    Image,
    /// A VM.
    Vm,
    /// A kind this crate does not know (from a newer daemon). The daemon never sends it.
    #[serde(other)]
    Unknown,
}

/// Something that happened in the daemon, as `GET /v1/events` streams it.
///
/// The set of event types grows: one this crate does not know decodes as
/// [`Event::Unknown`] (its fields are dropped), and
/// `banger_client::EventStream` skips it.
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
    /// An event type this crate does not know (from a newer daemon). The daemon never sends it.
    #[serde(other)]
    Unknown,
}
