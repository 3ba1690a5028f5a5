//! The API's error contract over the real socket: whatever the request
//! gets wrong (its JSON, content type, size, query, path, route or method),
//! the answer is a `{code, message}` JSON body with the code's status.

use banger_api::{ApiError, ErrorCode};
use banger_testkit::TestDaemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 answer, read whole.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The error body, after checking it is JSON.
    fn error(&self) -> ApiError {
        let content_type = self.header("content-type").unwrap_or_default();
        assert_eq!(content_type, "application/json", "status {}: {}", self.status, String::from_utf8_lossy(&self.body));
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not an ApiError ({e}): {:?}", self.body))
    }
}

/// Sends `head` (the request line and headers, without the final blank
/// line) and `body` on a fresh connection, and reads the answer to its end.
async fn send(daemon: &TestDaemon, head: &str, body: &[u8]) -> Answer {
    let mut stream = tokio::net::UnixStream::connect(&daemon.config.socket).await.unwrap();
    let request = format!("{head}\r\nHost: bangerd\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    // A daemon may answer (413) before it reads the whole body, and close.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked") {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

const JSON: &str = "Content-Type: application/json";

#[tokio::test]
async fn every_rejection_is_a_json_error_with_its_status() {
    let daemon = TestDaemon::start().await;
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(3 << 20));
    let cases: &[(&str, String, &[u8], u16, ErrorCode)] = &[
        ("malformed JSON", format!("POST /v1/vms HTTP/1.1\r\n{JSON}"), b"{\"name\":", 400, ErrorCode::InvalidArgument),
        (
            "an unknown field",
            format!("POST /v1/vms HTTP/1.1\r\n{JSON}"),
            b"{\"name\":\"a\",\"image\":\"i\",\"colour\":1}",
            400,
            ErrorCode::InvalidArgument,
        ),
        (
            "a field of the wrong type",
            format!("PATCH /v1/vms/a HTTP/1.1\r\n{JSON}"),
            b"{\"cpus\":\"two\"}",
            400,
            ErrorCode::InvalidArgument,
        ),
        (
            "a missing content type",
            "POST /v1/kernels/pull HTTP/1.1".to_owned(),
            b"{\"name\":\"k\"}",
            415,
            ErrorCode::UnsupportedMediaType,
        ),
        (
            "a wrong content type",
            "POST /v1/images/build HTTP/1.1\r\nContent-Type: text/plain".to_owned(),
            b"{\"name\":\"k\"}",
            415,
            ErrorCode::UnsupportedMediaType,
        ),
        ("a body over the limit", format!("POST /v1/vms HTTP/1.1\r\n{JSON}"), big.as_bytes(), 413, ErrorCode::TooLarge),
        ("a bad query", "DELETE /v1/vms/a?force=maybe HTTP/1.1".to_owned(), b"", 400, ErrorCode::InvalidArgument),
        (
            "a misspelt query parameter",
            "DELETE /v1/images/a?forse=true HTTP/1.1".to_owned(),
            b"",
            400,
            ErrorCode::InvalidArgument,
        ),
        ("a path that is not UTF-8", "GET /v1/vms/%FF%FE HTTP/1.1".to_owned(), b"", 400, ErrorCode::InvalidArgument),
        ("an unknown route", "GET /v1/nothing-here HTTP/1.1".to_owned(), b"", 404, ErrorCode::NotFound),
        ("a route outside /v1", "GET / HTTP/1.1".to_owned(), b"", 404, ErrorCode::NotFound),
        ("a wrong method", "PUT /v1/vms HTTP/1.1".to_owned(), b"", 405, ErrorCode::MethodNotAllowed),
    ];
    // Every case runs, and the failure lists each one that answered wrong.
    let mut wrong = Vec::new();
    for (what, head, body, status, code) in cases {
        let answer = send(&daemon, head, body).await;
        let content_type = answer.header("content-type").unwrap_or_default().to_owned();
        let error =
            serde_json::from_slice::<ApiError>(&answer.body).ok().filter(|_| content_type == "application/json");
        let fine = answer.status == *status && error.as_ref().is_some_and(|e| e.code == *code && !e.message.is_empty());
        if !fine {
            let got = String::from_utf8_lossy(&answer.body);
            wrong.push(format!("{what}: wanted {status} {code}, got {} {content_type} {got:.120}", answer.status));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases answered wrong:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
    assert!(daemon.client.vms().await.unwrap().is_empty(), "no rejected request made a VM");
}

#[tokio::test]
async fn a_wrong_method_says_which_methods_the_route_has() {
    let daemon = TestDaemon::start().await;
    let answer = send(&daemon, "POST /v1/vms/a/logs HTTP/1.1", b"").await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET,HEAD"));
    let error = answer.error();
    assert_eq!(error.code, ErrorCode::MethodNotAllowed);
    assert_eq!(error.message, "/v1/vms/a/logs does not answer POST");
}

#[tokio::test]
async fn parser_messages_name_what_is_wrong() {
    let daemon = TestDaemon::start().await;
    let answer =
        send(&daemon, &format!("POST /v1/vms HTTP/1.1\r\n{JSON}"), b"{\"name\":\"a\",\"image\":\"i\",\"colour\":1}")
            .await;
    let message = answer.error().message;
    assert!(message.contains("unknown field `colour`"), "{message}");
    let answer = send(&daemon, "POST /v1/vms HTTP/1.1", b"{}").await;
    let message = answer.error().message;
    assert!(message.contains("Content-Type: application/json"), "{message}");
}
