//! What a test needs from the host, and how long it may take. Under
//! `CI=true` a missing prerequisite fails the test, so CI cannot pass by
//! skipping; elsewhere the test says SKIP (past the harness's output
//! capture) and returns. Tests that boot guests run under [`with_timeout`].

use std::future::Future;
use std::io::Write;
use std::time::Duration;

/// Whether this is a CI run (`CI=true`, as CI systems set it, or `CI=1`).
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}

/// Whether the test may go on: `true` when `available`; otherwise, under
/// CI, a panic naming `what` is missing; elsewhere a SKIP line and `false`.
///
/// ```ignore
/// if !banger_testkit::require("root, to mount a loop XFS", banger_testkit::is_root()) {
///     return;
/// }
/// ```
#[track_caller]
pub fn require(what: &str, available: bool) -> bool {
    decide(in_ci(), what, available)
}

/// [`require`] with the CI decision made by the caller (what the unit
/// tests exercise, since the environment is shared by parallel tests).
#[track_caller]
pub fn decide(ci: bool, what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    let test = current_test();
    if ci {
        panic!(
            "{test}: missing prerequisite under CI=true: {what}. CI must run every test: \
             run scripts/setup-host (as root) to install what the tests need"
        );
    }
    let _ = writeln!(std::io::stderr(), "\n*** SKIP {test}: {what} is missing; this test did NOT run ***\n");
    false
}

/// Whether this process runs as root (loop mounts, image builds, chown).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a whole test body, failing the test (with its name) when it takes
/// longer than `limit`. Dropping the body on timeout runs its guards, so a
/// guest's VMM is killed. Call it from the test's own thread (the
/// `#[tokio::test]` body), where the test's name is known.
pub fn with_timeout<F: Future>(limit: Duration, body: F) -> impl Future<Output = F::Output> {
    let test = current_test();
    async move {
        match tokio::time::timeout(limit, body).await {
            Ok(output) => output,
            Err(_) => panic!("{test} did not finish within {limit:?} (whole-test timeout)"),
        }
    }
}

/// [`with_timeout`] for a blocking test body: `body` runs on its own
/// thread, and the test fails (with its name) when it takes longer than
/// `limit`; a panic in `body` is the test's panic. A body that overruns is
/// left to end with the test process, so its child processes should be
/// ones that end on their own (or be guarded by a kill-on-drop).
pub fn with_timeout_blocking<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let test = current_test();
    let (done, finished) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(test.clone())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let _ = done.send(outcome);
        })
        .expect("spawn the test body's thread");
    match finished.recv_timeout(limit) {
        Ok(Ok(value)) => {
            let _ = worker.join();
            value
        }
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{test} did not finish within {limit:?} (whole-test timeout)"),
    }
}

/// The running test's name: libtest names each test's thread after it.
fn current_test() -> String {
    std::thread::current().name().filter(|n| *n != "main").unwrap_or("this test").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "missing prerequisite under CI=true: a frobnicator")]
    fn under_ci_a_missing_prerequisite_fails_the_test() {
        decide(true, "a frobnicator", false);
    }

    #[test]
    fn outside_ci_a_missing_prerequisite_skips() {
        assert!(!decide(false, "a frobnicator", false));
    }

    #[test]
    fn a_present_prerequisite_lets_the_test_run_either_way() {
        assert!(decide(true, "a frobnicator", true));
        assert!(decide(false, "a frobnicator", true));
    }

    #[test]
    fn the_panic_names_the_test() {
        let caught = std::panic::catch_unwind(|| decide(true, "qemu-system-x86_64", false)).unwrap_err();
        let message = caught.downcast_ref::<String>().unwrap();
        assert!(message.contains("the_panic_names_the_test"), "{message}");
        assert!(message.contains("scripts/setup-host"), "{message}");
    }

    /// `require` reads `CI` from the environment: a child process of this
    /// test binary with `CI=true` fails where one without it skips.
    #[test]
    fn require_reads_ci_from_the_environment() {
        let run = |ci: Option<&str>| {
            let mut command = std::process::Command::new(std::env::current_exe().unwrap());
            command.args(["prereq::tests::missing_prerequisite_probe", "--exact", "--ignored", "--nocapture"]);
            command.env_remove("CI");
            if let Some(value) = ci {
                command.env("CI", value);
            }
            command.output().unwrap()
        };
        let ci = run(Some("true"));
        let said = format!("{}{}", String::from_utf8_lossy(&ci.stdout), String::from_utf8_lossy(&ci.stderr));
        assert!(!ci.status.success(), "CI=true: the test must fail: {said}");
        assert!(said.contains("missing prerequisite under CI=true"), "{said}");
        let local = run(None);
        assert!(local.status.success(), "without CI the test skips");
        assert!(String::from_utf8_lossy(&local.stderr).contains("*** SKIP"));
    }

    /// Run only by `require_reads_ci_from_the_environment`, as a child process.
    #[test]
    #[ignore = "a child process of require_reads_ci_from_the_environment"]
    fn missing_prerequisite_probe() {
        if !require("a prerequisite no host has", false) {
            return;
        }
        panic!("require let a test with a missing prerequisite go on");
    }

    #[tokio::test]
    #[should_panic(expected = "a_test_over_its_time_fails did not finish within")]
    async fn a_test_over_its_time_fails() {
        with_timeout(Duration::from_millis(50), std::future::pending::<()>()).await;
    }

    #[test]
    #[should_panic(expected = "a_blocking_test_over_its_time_fails did not finish within")]
    fn a_blocking_test_over_its_time_fails() {
        with_timeout_blocking(Duration::from_millis(50), || std::thread::sleep(Duration::from_secs(5)));
    }

    #[test]
    fn a_blocking_body_gives_its_value_or_its_panic() {
        assert_eq!(with_timeout_blocking(Duration::from_secs(5), || 7), 7);
        let caught = std::panic::catch_unwind(|| {
            with_timeout_blocking(Duration::from_secs(5), || panic!("the body's own failure"));
        })
        .unwrap_err();
        assert_eq!(caught.downcast_ref::<&str>(), Some(&"the body's own failure"));
    }
}
