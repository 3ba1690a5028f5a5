//! File copies: not served yet by this build (they answer `unsupported`).

use banger_agent_proto::mux::Stream;
use banger_agent_proto::ErrorKind;

use crate::requests::{answer, Refusal};

pub(crate) async fn copy_in(stream: Stream, _dest: &str) {
    answer(stream, Refusal::new(ErrorKind::Unsupported, "this agent does not copy files yet").reply()).await
}

pub(crate) async fn copy_out(stream: Stream, _path: &str) {
    answer(stream, Refusal::new(ErrorKind::Unsupported, "this agent does not copy files yet").reply()).await
}
