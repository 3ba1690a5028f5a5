//! The session requests that hold a stream.

use banger_agent_proto::mux::Stream;
use banger_agent_proto::{SessionStart, TtySize};

use super::{unsupported, Sessions};
use crate::requests::answer;

pub(crate) async fn start(stream: Stream, _start: SessionStart, _sessions: &Sessions) {
    answer(stream, unsupported().reply()).await
}

pub(crate) async fn attach(stream: Stream, _name: &str, _size: Option<TtySize>, _read_only: bool, _sessions: &Sessions) {
    answer(stream, unsupported().reply()).await
}

pub(crate) async fn logs(stream: Stream, _name: &str, _follow: bool, _tail: Option<u64>, _sessions: &Sessions) {
    answer(stream, unsupported().reply()).await
}

pub(crate) async fn send(stream: Stream, _name: &str, _sessions: &Sessions) {
    answer(stream, unsupported().reply()).await
}

pub(crate) async fn wait(stream: Stream, _name: &str, _sessions: &Sessions) {
    answer(stream, unsupported().reply()).await
}
