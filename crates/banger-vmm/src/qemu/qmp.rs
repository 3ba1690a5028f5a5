//! A minimal QMP client: one connection to QEMU's control socket, the
//! capabilities handshake, then one command at a time. Asynchronous events
//! that arrive while a command waits for its answer are skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::VmmError;

/// How long one exchange (connect and handshake, or one command) may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A negotiated QMP connection.
#[derive(Debug)]
pub(crate) struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to the QMP socket, reads the greeting and leaves
    /// capabilities negotiation mode.
    pub(crate) async fn connect(path: &Path) -> Result<Self, VmmError> {
        let api_err = |reason: String| VmmError::Api { request: "qmp_capabilities".into(), reason };
        let handshake = async {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|e| api_err(format!("cannot connect to {}: {e}", path.display())))?;
            let (read, writer) = stream.into_split();
            let mut qmp = Qmp { reader: BufReader::new(read), writer };
            match qmp.read_message().await.map_err(|e| api_err(e.to_string()))? {
                Some(greeting) if greeting.get("QMP").is_some() => {}
                Some(other) => return Err(api_err(format!("unexpected greeting {other}"))),
                None => return Err(api_err("QEMU closed the connection before its greeting".into())),
            }
            qmp.exchange("qmp_capabilities").await?;
            Ok(qmp)
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, handshake)
            .await
            .map_err(|_| api_err(format!("no answer within {EXCHANGE_TIMEOUT:?}")))?
    }

    /// Runs a command without arguments and returns its `return` value.
    pub(crate) async fn execute(&mut self, command: &str) -> Result<Value, VmmError> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(command)).await.map_err(|_| VmmError::Api {
            request: command.into(),
            reason: format!("no answer within {EXCHANGE_TIMEOUT:?}"),
        })?
    }

    async fn exchange(&mut self, command: &str) -> Result<Value, VmmError> {
        let api_err = |reason: String| VmmError::Api { request: command.into(), reason };
        let mut line = json!({ "execute": command }).to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await.map_err(|e| api_err(e.to_string()))?;
        loop {
            let Some(message) = self.read_message().await.map_err(|e| api_err(e.to_string()))? else {
                return Err(api_err("QEMU closed the connection".into()));
            };
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let class = error.get("class").and_then(Value::as_str).unwrap_or("Error");
                let desc = error.get("desc").and_then(Value::as_str).unwrap_or("no description");
                return Err(api_err(format!("{class}: {desc}")));
            }
            // Anything else ("event" messages) is not the answer.
        }
    }

    /// Reads one JSON message; `None` at end of stream.
    async fn read_message(&mut self) -> std::io::Result<Option<Value>> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Ok(None);
            }
            if !line.trim().is_empty() {
                return serde_json::from_str(&line).map(Some).map_err(std::io::Error::other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QEMU that greets, checks each command it receives against
    /// `expected`, and answers with the matching canned lines.
    async fn fake_qemu(listener: UnixListener, script: Vec<(&'static str, Vec<String>)>) -> Vec<String> {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\r\n").await.unwrap();
        let mut seen = Vec::new();
        for (expected, answers) in script {
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            let command: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(command["execute"], expected);
            seen.push(expected.to_string());
            for answer in answers {
                write.write_all(format!("{answer}\r\n").as_bytes()).await.unwrap();
            }
        }
        seen
    }

    #[tokio::test]
    async fn negotiates_then_skips_events_until_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let server = tokio::spawn(fake_qemu(
            UnixListener::bind(&path).unwrap(),
            vec![
                ("qmp_capabilities", vec![r#"{"return": {}}"#.into()]),
                (
                    "query-status",
                    vec![
                        r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#.into(),
                        r#"{"return": {"status": "running", "running": true}}"#.into(),
                    ],
                ),
            ],
        ));
        let mut qmp = Qmp::connect(&path).await.unwrap();
        let status = qmp.execute("query-status").await.unwrap();
        assert_eq!(status["status"], "running");
        assert_eq!(server.await.unwrap(), ["qmp_capabilities", "query-status"]);
    }

    #[tokio::test]
    async fn an_error_answer_names_the_command_and_class() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let server = tokio::spawn(fake_qemu(
            UnixListener::bind(&path).unwrap(),
            vec![
                ("qmp_capabilities", vec![r#"{"return": {}}"#.into()]),
                ("frobnicate", vec![r#"{"error": {"class": "CommandNotFound", "desc": "no such command"}}"#.into()]),
            ],
        ));
        let mut qmp = Qmp::connect(&path).await.unwrap();
        let err = qmp.execute("frobnicate").await.unwrap_err();
        assert_eq!(err.to_string(), "VMM API request frobnicate failed: CommandNotFound: no such command");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_connection_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let server = tokio::spawn(fake_qemu(
            UnixListener::bind(&path).unwrap(),
            vec![("qmp_capabilities", vec![r#"{"return": {}}"#.into()]), ("quit", vec![])],
        ));
        let mut qmp = Qmp::connect(&path).await.unwrap();
        let quit = qmp.execute("quit");
        let err = quit.await.unwrap_err();
        assert!(err.to_string().contains("closed the connection"), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_api_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("qmp.sock")).await.unwrap_err();
        assert!(matches!(err, VmmError::Api { .. }), "{err:?}");
    }
}
