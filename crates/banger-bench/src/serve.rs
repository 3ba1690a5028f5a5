//! A minimal HTTP/1.1 server on 127.0.0.1 that serves one in-memory file,
//! so both sides of a benchmark read the same bytes without touching disk.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use anyhow::Context;

/// The server; its threads live until the process ends.
pub struct BundleServer {
    port: u16,
    path: String,
}

impl BundleServer {
    /// Binds a free loopback port and answers GET `path` with `body`.
    pub fn start(path: &str, body: Arc<Vec<u8>>) -> anyhow::Result<BundleServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
        let port = listener.local_addr().context("cannot read the bound port")?.port();
        let served = path.to_owned();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let body = Arc::clone(&body);
                let served = served.clone();
                thread::spawn(move || answer(stream, &served, &body));
            }
        });
        Ok(BundleServer { port, path: path.to_owned() })
    }

    /// The URL the file is served at.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.path)
    }
}

/// Answers one request and closes the connection; a client that goes away
/// mid-answer is not the server's problem.
fn answer(mut stream: TcpStream, served: &str, body: &[u8]) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = match (method, path == served) {
        ("GET", true) => ("200 OK", body),
        _ => ("404 Not Found", &b"not found\n"[..]),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/zstd\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
}
