//! Firecracker's API over its unix socket with hyper's HTTP/1.1 client: one
//! connection per request (a handful are sent per VM), a JSON body, and
//! Firecracker's `fault_message` for a refused one.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use super::api::ApiRequest;
use super::socket;
use crate::VmmError;

/// How long one request may take; Firecracker answers configuration
/// requests in milliseconds (InstanceStart in about 70).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body accepted (Firecracker's are a few hundred bytes).
const MAX_RESPONSE: usize = 64 * 1024;

/// Why an exchange failed, before it is told as [`VmmError::Api`].
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("cannot connect to the API socket")]
    Connect(#[source] std::io::Error),
    #[error("HTTP exchange failed")]
    Http(#[source] hyper::Error),
    #[error("cannot read the response body")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot build the request")]
    Request(#[source] hyper::http::Error),
}

/// Sends `request` to the API socket; a non-2xx answer becomes
/// [`VmmError::Api`] with Firecracker's `fault_message`.
pub async fn send(api_sock: &Path, request: &ApiRequest) -> Result<(), VmmError> {
    let fail = |reason: String| VmmError::Api { request: request.describe(), reason };
    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange(api_sock, request))
        .await
        .map_err(|_| fail(format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| fail(error_chain(&e)))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(fail(format!("{}: {}", status.as_u16(), fault_message(&body))))
    }
}

async fn exchange(api_sock: &Path, request: &ApiRequest) -> Result<(hyper::StatusCode, Bytes), ExchangeError> {
    let stream = socket::connect(api_sock).await.map_err(ExchangeError::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ExchangeError::Http)?;
    // The connection task ends when the sender is dropped (or on error,
    // which the request then reports).
    let connection = tokio::spawn(connection);
    let response = sender.send_request(build(request)?).await.map_err(ExchangeError::Http)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE).collect().await.map_err(ExchangeError::Body)?;
    drop(sender);
    connection.abort();
    Ok((status, body.to_bytes()))
}

/// The HTTP request for `request`.
fn build(request: &ApiRequest) -> Result<Request<Full<Bytes>>, ExchangeError> {
    let method = Method::from_bytes(request.method().as_bytes()).unwrap_or(Method::PUT);
    Request::builder()
        .method(method)
        .uri(request.path())
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(request.body().to_string())))
        .map_err(ExchangeError::Request)
}

/// `error` and its causes, one after the other.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Firecracker's `{"fault_message": "..."}`, or the body as it is.
fn fault_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Fault {
        fault_message: String,
    }
    match serde_json::from_slice::<Fault>(body) {
        Ok(fault) => fault.fault_message,
        Err(_) if body.is_empty() => "no error message".into(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firecracker::api::ActionType;

    #[test]
    fn request_is_a_json_put() {
        let request = build(&ApiRequest::action(ActionType::InstanceStart)).unwrap();
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri(), "/actions");
        assert_eq!(request.headers()[hyper::header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn fault_messages() {
        assert_eq!(
            fault_message(br#"{"fault_message":"The kernel file cannot be opened"}"#),
            "The kernel file cannot be opened"
        );
        assert_eq!(fault_message(b"oops"), "oops");
        assert_eq!(fault_message(b""), "no error message");
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_api_error_naming_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let error =
            send(&dir.path().join("none.sock"), &ApiRequest::action(ActionType::InstanceStart)).await.unwrap_err();
        let VmmError::Api { request, reason } = error else { panic!("not an API error") };
        assert_eq!(request, "PUT /actions");
        assert!(reason.starts_with("cannot connect to the API socket: "), "{reason}");
    }

    /// Something that answers, but not with HTTP.
    #[tokio::test]
    async fn garbage_is_an_error() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await.unwrap();
        });
        let error = send(&path, &ApiRequest::action(ActionType::InstanceStart)).await.unwrap_err();
        assert!(
            matches!(error, VmmError::Api { ref reason, .. } if reason.starts_with("HTTP exchange failed")),
            "{error}"
        );
    }
}
