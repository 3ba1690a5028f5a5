//! The HTTP API: every route is declared once, with its OpenAPI
//! description, through `utoipa-axum`, so the served document cannot miss a
//! route.

mod kernels;
mod operations;
mod system;

use std::sync::{Arc, OnceLock};

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Daemon;

#[derive(OpenApi)]
#[openapi(
    info(title = "bangerd", description = "The banger daemon's API: kernels, operations and events over a unix socket."),
    tags(
        (name = "system", description = "Health, host checks and this document"),
        (name = "operations", description = "Long work and the event stream"),
        (name = "kernels", description = "The kernel store and catalogs"),
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
}

/// The router, ready to serve.
pub fn router(daemon: Arc<Daemon>) -> Router {
    let (router, _) = api().split_for_parts();
    router.with_state(daemon)
}

/// The OpenAPI document describing every route.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = api().split_for_parts().1;
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc
    })
}
