//! Operations: long work with progress and an outcome, and what a
//! finished one made.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{OneOfBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};
use utoipa::ToSchema;

use crate::{ApiError, Image, Kernel, Timestamp, Vm};

crate::open_enum::open_enum! {
    /// What an operation does.
    ///
    /// The set grows with every new kind of long work: a kind this crate
    /// does not know decodes as `Unknown`, so an old client still lists and
    /// follows a newer daemon's operations.
    pub enum OperationKind {
        /// `kernel pull`.
        KernelPull = "kernel_pull",
        /// `kernel import`.
        KernelImport = "kernel_import",
        /// `image build`.
        ImageBuild = "image_build",
        /// `image register`.
        ImageRegister = "image_register",
        /// `vm create`.
        VmCreate = "vm_create",
        /// `vm start`.
        VmStart = "vm_start",
        /// `vm stop`.
        VmStop = "vm_stop",
        /// `vm restart`.
        VmRestart = "vm_restart",
        /// `vm kill`.
        VmKill = "vm_kill",
        /// `vm rm`.
        VmRemove = "vm_remove",
    }
}

/// Where an operation is in its life.
///
/// Closed, on purpose: clients decide from it whether to keep waiting, and
/// a state they cannot place would leave them guessing. Finer outcomes
/// (cancelled, say) are a `Failed` with their own [`crate::ErrorCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Still working.
    Running,
    /// Finished; `result` holds what it made.
    Succeeded,
    /// Finished; `error` says why, and what it made was removed.
    Failed,
}

impl OperationState {
    /// Whether the operation has finished, well or badly.
    pub fn is_terminal(self) -> bool {
        !matches!(self, OperationState::Running)
    }
}

/// How far an operation has come.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// The step under way, in words (`download`, `extract`, ...).
    pub step: String,
    /// Steps finished so far.
    pub steps_done: u32,
    /// Steps in all.
    pub steps_total: u32,
    /// Bytes handled in the current step.
    pub bytes_done: u64,
    /// Bytes the current step will handle, when known.
    pub bytes_total: Option<u64>,
}

impl Progress {
    /// Percent done of the whole operation, 0 to 100.
    pub fn percent(&self) -> f64 {
        if self.steps_total == 0 {
            return 0.0;
        }
        let within = match self.bytes_total {
            Some(total) if total > 0 => (self.bytes_done as f64 / total as f64).min(1.0),
            _ => 0.0,
        };
        ((self.steps_done as f64 + within) / self.steps_total as f64 * 100.0).min(100.0)
    }
}

/// Long work the daemon does on a client's behalf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    /// Unique id.
    pub id: String,
    /// What it does.
    pub kind: OperationKind,
    /// The name of the object it works on.
    pub target: String,
    /// Where it is.
    pub state: OperationState,
    /// How far it has come.
    pub progress: Progress,
    /// Why it failed, when it did.
    pub error: Option<ApiError>,
    /// What it made or changed, when it succeeded and made something.
    pub result: Option<OperationResult>,
    /// When it started.
    pub created_at: Timestamp,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
}

/// What a finished operation made or changed. On the wire it is the
/// object itself, told apart by its fields (each type has required fields
/// the others lack), which is the form recorded operations have always held.
/// Boxed, so an operation (and every event that carries one) stays small.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OperationResult {
    /// A kernel (`kernel pull`, `kernel import`).
    Kernel(Box<Kernel>),
    /// An image (`image build`, `image register`).
    Image(Box<Image>),
    /// A VM (`vm create`, `vm start`, and the other VM operations).
    Vm(Box<Vm>),
    /// Something this crate does not know (a newer daemon's), as sent.
    Other(serde_json::Value),
}

impl OperationResult {
    /// The kernel, if that is what it is.
    pub fn into_kernel(self) -> Option<Kernel> {
        match self {
            OperationResult::Kernel(kernel) => Some(*kernel),
            _ => None,
        }
    }

    /// The image, if that is what it is.
    pub fn into_image(self) -> Option<Image> {
        match self {
            OperationResult::Image(image) => Some(*image),
            _ => None,
        }
    }

    /// The VM, if that is what it is.
    pub fn into_vm(self) -> Option<Vm> {
        match self {
            OperationResult::Vm(vm) => Some(*vm),
            _ => None,
        }
    }
}

impl From<Kernel> for OperationResult {
    fn from(kernel: Kernel) -> OperationResult {
        OperationResult::Kernel(Box::new(kernel))
    }
}

impl From<Image> for OperationResult {
    fn from(image: Image) -> OperationResult {
        OperationResult::Image(Box::new(image))
    }
}

impl From<Vm> for OperationResult {
    fn from(vm: Vm) -> OperationResult {
        OperationResult::Vm(Box::new(vm))
    }
}

/// Written by hand so the document lists only what the daemon sends:
/// `Other` is the client's fallback, and an any-schema beside the others
/// would make the `oneOf` ambiguous.
impl utoipa::PartialSchema for OperationResult {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name(Kernel::name()))
            .item(Ref::from_schema_name(Image::name()))
            .item(Ref::from_schema_name(Vm::name()))
            .description(Some("What the operation made or changed: a kernel, an image or a VM."))
            .into()
    }
}

impl ToSchema for OperationResult {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Kernel::name().into(), <Kernel as utoipa::PartialSchema>::schema()));
        Kernel::schemas(schemas);
        schemas.push((Image::name().into(), <Image as utoipa::PartialSchema>::schema()));
        Image::schemas(schemas);
        schemas.push((Vm::name().into(), <Vm as utoipa::PartialSchema>::schema()));
        Vm::schemas(schemas);
    }
}
