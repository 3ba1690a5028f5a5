//! What a user sees when something goes wrong: one line on stderr, the
//! error and its causes, never a backtrace, whatever the backtrace
//! variables say.

use std::path::Path;
use std::process::Output;

fn banger_with_backtraces(socket: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("BANGER_SOCKET")
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .expect("run banger")
}

fn assert_one_line_without_backtrace(out: &Output) -> String {
    let err = String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8");
    assert!(err.ends_with('\n'), "{err:?}");
    assert_eq!(err.lines().count(), 1, "stderr must be one line: {err:?}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    err
}

#[test]
fn no_daemon_is_one_line_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    // A socket file nobody listens on (connection refused), and no file at all.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [stale, dir.path().join("none.sock")] {
        let out = banger_with_backtraces(&socket, &["kernel", "list"]);
        assert_eq!(out.status.code(), Some(5), "daemon unreachable exits 5");
        let err = assert_one_line_without_backtrace(&out);
        let expected = format!("error: cannot reach bangerd at {}: ", socket.display());
        assert!(err.starts_with(&expected), "{err:?}");
        assert!(err.contains("; is bangerd running? Start it with `sudo bangerd`"), "{err:?}");
    }
}
