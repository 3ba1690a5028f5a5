//! The HTTP API: every route is declared once, with its OpenAPI
//! description, through `utoipa-axum`, so the served document cannot miss a
//! route.

mod extract;
mod files;
mod images;
mod kernels;
mod operations;
mod ports;
mod responses;
mod sessions;
mod ssh;
mod stats;
mod streams;
mod system;
mod vms;
pub(crate) mod ws;

use std::sync::{Arc, OnceLock};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use banger_api::{Event, ObjectKind, Operation, OperationResult};
use futures::future::BoxFuture;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::extract::Json;
use crate::error::Result;
use crate::operations::OperationHandle;
use crate::Daemon;

#[derive(OpenApi)]
#[openapi(
    info(title = "bangerd", description = "The banger daemon's API over a unix socket: kernels, images, VMs, operations and events. \
Every error is an `ApiError` (`{code, message}` JSON); a path no route has answers 404 `not_found`, a method a route lacks 405 `method_not_allowed`."),
    tags(
        (name = "system", description = "Health, host checks and this document"),
        (name = "operations", description = "Long work and the event stream"),
        (name = "kernels", description = "The kernel store and catalogs"),
        (name = "images", description = "Root filesystem images"),
        (name = "vms", description = "Virtual machines"),
        (name = "sessions", description = "Guest sessions: commands under a terminal that outlive their clients"),
    )
)]
struct ApiDoc;

fn api() -> OpenApiRouter<Arc<Daemon>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::health))
        .routes(routes!(system::doctor))
        .routes(routes!(system::openapi_json))
        .routes(routes!(operations::list))
        .routes(routes!(operations::get))
        .routes(routes!(operations::events))
        .routes(routes!(kernels::list))
        .routes(routes!(kernels::catalog))
        .routes(routes!(kernels::pull))
        .routes(routes!(kernels::import))
        .routes(routes!(kernels::show, kernels::remove))
        .routes(routes!(kernels::bundle))
        .routes(routes!(images::list))
        .routes(routes!(images::build))
        .routes(routes!(images::register))
        .routes(routes!(images::prune))
        .routes(routes!(images::show, images::remove))
        .routes(routes!(vms::list, vms::create))
        .routes(routes!(vms::show, vms::remove, vms::set))
        .routes(routes!(vms::start))
        .routes(routes!(vms::stop))
        .routes(routes!(vms::restart))
        .routes(routes!(vms::kill))
        .routes(routes!(vms::resize_disk))
        .routes(routes!(vms::logs))
        .routes(routes!(files::files))
        .routes(routes!(stats::show))
        .routes(routes!(stats::ports))
        .routes(routes!(sessions::list, sessions::start))
        .routes(routes!(sessions::show, sessions::remove))
        .routes(routes!(sessions::send))
        .routes(routes!(sessions::stop))
        .routes(routes!(sessions::wait))
        .routes(routes!(streams::exec))
        .routes(routes!(streams::attach))
        .routes(routes!(streams::session_logs))
        .routes(routes!(ports::connect))
        .routes(routes!(ports::list, ports::add))
        .routes(routes!(ports::remove))
        .routes(routes!(ssh::info))
        .routes(routes!(ssh::register))
}

/// What an operation's work ends with, as the operation's result.
trait Outcome {
    /// The result clients see: what the work made or changed, if anything.
    fn into_result(self) -> Option<OperationResult>;
}

impl Outcome for banger_api::Kernel {
    fn into_result(self) -> Option<OperationResult> {
        Some(self.into())
    }
}

impl Outcome for banger_api::Image {
    fn into_result(self) -> Option<OperationResult> {
        Some(self.into())
    }
}

impl Outcome for banger_api::Vm {
    fn into_result(self) -> Option<OperationResult> {
        Some(self.into())
    }
}

/// Work that leaves nothing to show (a removal).
impl Outcome for () {
    fn into_result(self) -> Option<OperationResult> {
        None
    }
}

/// What happens to an operation's work when the daemon begins shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtShutdown {
    /// It is dropped where it waits; its guards clean up what they can and
    /// the operation is recorded as failed (pulls, builds: long work whose
    /// half-made results are staging directories).
    Cut,
    /// It runs to its end, which comes soon: the work is bounded or watches
    /// the shutdown itself and undoes what it made (the VM lifecycle,
    /// where dropping it would leave a VMM running).
    Finish,
}

/// Runs an operation's work in the background and answers 202 with the
/// operation. On success the work's value is the operation's result, and
/// `created` (if any) is announced.
fn spawn<T, F>(
    daemon: Arc<Daemon>,
    op: OperationHandle,
    created: Option<(ObjectKind, String)>,
    at_shutdown: AtShutdown,
    work: F,
) -> (StatusCode, Json<Operation>)
where
    T: Outcome,
    F: for<'a> FnOnce(Arc<Daemon>, &'a OperationHandle) -> BoxFuture<'a, Result<T>> + Send + 'static,
{
    let snapshot = op.snapshot();
    let events = daemon.events.clone();
    let tasks = daemon.tasks.clone();
    tasks.spawn(async move {
        let stopping = Arc::clone(&daemon);
        let cut = async move {
            match at_shutdown {
                AtShutdown::Cut => stopping.shutting_down().await,
                AtShutdown::Finish => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            outcome = work(daemon, &op) => outcome,
            () = cut => {
                Err(crate::error::Error::Internal("interrupted: the daemon stopped while it ran".into()))
            }
        };
        match outcome {
            Ok(value) => {
                op.finish(Ok(value.into_result()));
                if let Some((kind, name)) = created {
                    events.publish(Event::Created { kind, name });
                }
            }
            Err(error) => op.finish(Err(&error)),
        }
    });
    (StatusCode::ACCEPTED, Json(snapshot.expect("a just-started operation is running")))
}

/// The router, ready to serve.
pub fn router(daemon: Arc<Daemon>) -> Router {
    let (router, _) = api().split_for_parts();
    // The method fallback reaches only the routes registered before it.
    router
        .fallback(extract::no_route)
        .method_not_allowed_fallback(extract::wrong_method)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .with_state(daemon)
}

/// The OpenAPI document describing every route.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = api().split_for_parts().1;
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        responses::add_common(&mut doc);
        doc
    })
}
