//! A small but real HTTP/1.1 server on 127.0.0.1 that answers each path
//! with a canned response. Raw sockets let it misbehave on purpose: a
//! body shorter than its Content-Length, a slow body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server answers for one path.
#[derive(Clone, Debug)]
pub struct Canned {
    /// Status code.
    pub status: u16,
    /// Body bytes actually sent.
    pub body: Vec<u8>,
    /// Content-Length to declare, when it should differ from the body (truncation).
    pub declared_len: Option<usize>,
    /// Pause after sending the first half of the body.
    pub stall: Option<Duration>,
}

impl Canned {
    /// 200 with this body.
    pub fn ok(body: Vec<u8>) -> Canned {
        Canned { status: 200, body, declared_len: None, stall: None }
    }

    /// An error status with a short text body.
    pub fn status(status: u16) -> Canned {
        Canned { status, body: b"error\n".to_vec(), declared_len: None, stall: None }
    }
}

/// The server; it runs until the test's runtime ends.
pub struct HttpServer {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Canned>>>,
}

impl HttpServer {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Canned>>> = Arc::default();
        let table = Arc::clone(&routes);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&table)));
            }
        });
        HttpServer { port, routes }
    }

    /// Answers `path` with `canned` from now on; returns the full URL.
    pub fn route(&self, path: &str, canned: Canned) -> String {
        self.routes.lock().unwrap().insert(path.to_owned(), canned);
        self.url(path)
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn serve(mut stream: tokio::net::TcpStream, routes: Arc<Mutex<HashMap<String, Canned>>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let canned = routes.lock().unwrap().get(&path).cloned().unwrap_or_else(|| Canned::status(404));
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        canned.status,
        canned.declared_len.unwrap_or(canned.body.len())
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let half = canned.body.len() / 2;
    let _ = stream.write_all(&canned.body[..half]).await;
    if let Some(stall) = canned.stall {
        tokio::time::sleep(stall).await;
    }
    let _ = stream.write_all(&canned.body[half..]).await;
    let _ = stream.shutdown().await;
}
