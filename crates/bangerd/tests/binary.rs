//! The `bangerd` binary itself: configuration precedence (file, then
//! environment, then flags) and graceful shutdown on SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_client::Client;

fn spawn(args: &[&str], env: &[(&str, &Path)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bangerd"));
    command.args(args).env_remove("BANGER_SOCKET").env_remove("BANGER_STATE_DIR").env_remove("BANGER_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn bangerd")
}

/// Waits for the socket to answer, or for the process to die.
async fn wait_ready(child: &mut Child, socket: &Path) -> Client {
    let client = Client::new(socket);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if client.health().await.is_ok() {
            return client;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("bangerd exited early with {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("bangerd did not answer on {} within 20 s", socket.display());
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "bangerd did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn flags_beat_environment_which_beats_the_config_file_and_sigterm_stops_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("config.toml");
    let file_state = root.path().join("file-state");
    let env_state = root.path().join("env-state");
    let flag_state = root.path().join("flag-state");
    let socket = root.path().join("b.sock");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nstate_dir = {:?}\nrun_dir = {:?}\n",
            socket.display().to_string(),
            file_state.display().to_string(),
            root.path().join("run").display().to_string()
        ),
    )
    .unwrap();

    // The file alone.
    let mut child = spawn(&["--config", config.to_str().unwrap()], &[]);
    let client = wait_ready(&mut child, &socket).await;
    assert_eq!(client.health().await.unwrap().state_dir, file_state.display().to_string());
    assert!(terminate(&mut child).success(), "SIGTERM is a clean exit");
    assert!(!socket.exists(), "the socket is removed on shutdown");

    // The environment over the file.
    let mut child = spawn(&["--config", config.to_str().unwrap()], &[("BANGER_STATE_DIR", &env_state)]);
    let client = wait_ready(&mut child, &socket).await;
    assert_eq!(client.health().await.unwrap().state_dir, env_state.display().to_string());
    assert!(terminate(&mut child).success());

    // A flag over both.
    let mut child = spawn(
        &["--config", config.to_str().unwrap(), "--state-dir", flag_state.to_str().unwrap()],
        &[("BANGER_STATE_DIR", &env_state)],
    );
    let client = wait_ready(&mut child, &socket).await;
    assert_eq!(client.health().await.unwrap().state_dir, flag_state.display().to_string());
    assert!(terminate(&mut child).success());
    assert!(flag_state.join("banger.db").exists());
}

#[test]
fn a_missing_config_file_named_on_purpose_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("nope.toml");
    let out = spawn(&["--config", missing.to_str().unwrap()], &[]).wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("config.toml");
    std::fs::write(&config, "stat_dir = \"/x\"\n").unwrap();
    let out = spawn(&["--config", config.to_str().unwrap()], &[]).wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid config file") && stderr.contains("stat_dir"), "{stderr}");
}
