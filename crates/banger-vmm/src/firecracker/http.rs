//! A minimal HTTP/1.1 client for Firecracker's API socket: one request per
//! connection, a JSON body with `Content-Length`, and a response read up to
//! its `Content-Length` (Firecracker keeps connections alive, so reading to
//! the end would hang).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::api::ApiRequest;
use crate::VmmError;

/// How long one request may take; Firecracker answers configuration
/// requests in milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response accepted (Firecracker's are a few hundred bytes).
const MAX_RESPONSE: usize = 64 * 1024;

/// Sends `request` to the API socket; a non-2xx answer becomes
/// [`VmmError::Api`] with Firecracker's `fault_message`.
pub async fn send(api_sock: &Path, request: &ApiRequest) -> Result<(), VmmError> {
    let fail = |reason: String| VmmError::Api { request: request.describe(), reason };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange(api_sock, request))
        .await
        .map_err(|_| fail(format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    if (200..300).contains(&response.status) {
        Ok(())
    } else {
        Err(fail(format!("{}: {}", response.status, fault_message(&response.body))))
    }
}

async fn exchange(api_sock: &Path, request: &ApiRequest) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(api_sock).await?;
    stream.write_all(&encode(request)).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(response) = parse_response(&buf).map_err(invalid)? {
            return Ok(response);
        }
        if buf.len() > MAX_RESPONSE {
            return Err(invalid("response too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed mid-response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn invalid(reason: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad HTTP response: {reason}"))
}

/// The bytes of `request` on the wire.
fn encode(request: &ApiRequest) -> Vec<u8> {
    let body = request.body().to_string();
    let mut out = format!(
        "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        request.method(),
        request.path(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// A response's status and body.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// The response in `buf`, or `None` if more bytes are needed.
fn parse_response(buf: &[u8]) -> Result<Option<Response>, &'static str> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("no HTTP/1.x status line");
    }
    let status = parts.next().and_then(|s| s.parse().ok()).ok_or("no status code")?;
    let mut content_length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().map_err(|_| "bad Content-Length")?;
            }
        }
    }
    let body_start = head_end + 4;
    if buf.len() < body_start + content_length {
        return Ok(None);
    }
    Ok(Some(Response { status, body: buf[body_start..body_start + content_length].to_vec() }))
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
    fn request_has_content_length_and_json_body() {
        let wire = String::from_utf8(encode(&ApiRequest::action(ActionType::InstanceStart))).unwrap();
        let (head, body) = wire.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("PUT /actions HTTP/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert_eq!(body, r#"{"action_type":"InstanceStart"}"#);
    }

    #[test]
    fn no_content_response_parses() {
        let r = parse_response(b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(r, Ok(Some(Response { status: 204, body: vec![] })));
    }

    #[test]
    fn partial_response_needs_more_bytes() {
        assert_eq!(parse_response(b"HTTP/1.1 400 Bad Request\r\nContent-Le"), Ok(None));
        assert_eq!(parse_response(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 10\r\n\r\n{\"fa"), Ok(None));
    }

    #[test]
    fn error_response_yields_fault_message() {
        let body = br#"{"fault_message":"The kernel file cannot be opened"}"#;
        let wire = [format!("HTTP/1.1 400 \r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(), body].concat();
        let response = parse_response(&wire).unwrap().unwrap();
        assert_eq!(response.status, 400);
        assert_eq!(fault_message(&response.body), "The kernel file cannot be opened");
        assert_eq!(fault_message(b"oops"), "oops");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
