//! How requests are read: axum's JSON body, query and path extractors,
//! whose rejections become the API's `{code, message}` errors instead of
//! axum's plain text, and the answers for unknown routes and wrong methods.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

/// The largest request body the daemon reads. Every body is a small JSON
/// document; file content never travels in one.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// A JSON request body (or response), read by `axum::Json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(rejected(rejection.status(), rejection.body_text())),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A query string, read by `axum::extract::Query`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(rejected(rejection.status(), rejection.body_text())),
        }
    }
}

/// Path parameters, read by `axum::extract::Path`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(rejected(rejection.status(), rejection.body_text())),
        }
    }
}

/// The error for a rejection axum answered with `status`: its status
/// picks the error code, so the one mapping from code to status holds.
fn rejected(status: StatusCode, message: String) -> Error {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Error::BodyTooLarge(format!(
            "the request body is too large: the daemon reads at most {} MiB",
            MAX_BODY_BYTES >> 20
        )),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Error::UnsupportedMediaType(message),
        // A route declared with parameters its handler does not read: a bug.
        status if status.is_server_error() => Error::Internal(message),
        _ => Error::InvalidArgument(message),
    }
}

/// The answer for a path no route has.
pub async fn no_route(uri: Uri) -> Error {
    Error::NoRoute { path: uri.path().to_owned() }
}

/// The answer for a route asked with a method it does not have (axum adds
/// the `Allow` header).
pub async fn wrong_method(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
}
