//! schemathesis (installed by scripts/setup-host) fuzzes the daemon from
//! its own OpenAPI document and checks every answer against it: no server
//! errors, and only the statuses, content types and bodies the document
//! lists. The daemon runs in-process with the test driver, so nothing it
//! is asked could boot a guest; schemathesis speaks TCP, so the test
//! bridges a loopback port to the unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{KernelPullRequest, VmCreateRequest};
use banger_testkit::bundles::{entry, good_bundle};
use banger_testkit::requests::{succeed, tiny_image, vm};
use banger_testkit::{prereq, Canned, HttpServer, TestDaemon};
use banger_vmm::local::{Local, LocalFaults};

/// The whole test, schemathesis's run included.
const TEST_TIMEOUT: Duration = Duration::from_secs(170);

/// Where scripts/setup-host installs it; `BANGER_SCHEMATHESIS` overrides.
const DEFAULT_SCHEMATHESIS: &str = "/opt/banger-test/venv/bin/schemathesis";

/// What every answer is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// Cases per operation and phase: enough for the coverage phase's edge
/// values and some random ones, inside the time limit on a busy machine.
const MAX_EXAMPLES: &str = "25";

fn schemathesis() -> PathBuf {
    std::env::var_os("BANGER_SCHEMATHESIS").map_or_else(|| PathBuf::from(DEFAULT_SCHEMATHESIS), PathBuf::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let program = schemathesis();
    if !prereq::require(&format!("schemathesis at {}", program.display()), program.is_file())
        || !prereq::require("root, to build the tiny image", prereq::is_root())
    {
        return;
    }
    prereq::with_timeout(TEST_TIMEOUT, run(program)).await;
}

/// What the fuzzed path parameters name half the time, so routes answer
/// with real objects and not only 404s: kernel "k", image "tiny" and VM
/// "v" (made, not started) exist when the run begins.
const CONFIG: &str = r#"
[dictionaries.names]
values = ["k", "tiny", "v"]

[parameters]
"path.name" = { dictionary = "names", probability = 0.5 }
# Following a running VM's console streams until the VM stops, like the
# event stream; the one-shot read is fuzzed.
"query.follow" = false
"#;

async fn run(program: PathBuf) {
    let agent = banger_testkit::guest::agent_binary();
    let daemon = TestDaemon::start_with(|c| {
        c.agent_binary = Some(agent.clone());
        c.test_driver = Some(Local { agent: agent.clone(), faults: LocalFaults::default() });
        c.boot_timeout = Duration::from_secs(3);
    })
    .await;
    let server = HttpServer::start().await;
    objects(&daemon, &server).await;
    let port = bridge(&daemon.config.socket).await;
    let reports = daemon.root.path().join("schemathesis");
    let config = daemon.root.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let output = tokio::process::Command::new(&program)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://127.0.0.1:{port}/v1/openapi.json"))
        .args(["--checks", CHECKS, "--max-examples", MAX_EXAMPLES, "--workers", "2", "--seed", "7"])
        // A disk resize to near 16 TiB takes resize2fs half a minute here.
        .args(["--request-timeout", "60", "--no-color", "--suppress-health-check", "all"])
        // The event stream never ends while the daemon runs: every request
        // would wait out the request timeout. It has no request body and
        // one optional query string; tests/daemon.rs reads it for real.
        .args(["--exclude-path", "/v1/events"])
        .arg("--report-dir")
        .arg(&reports)
        // Its cache and its report stay inside the test's root.
        .current_dir(daemon.root.path())
        .env("HOME", daemon.root.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown with `--nocapture`: what was tested, and the warnings.
    println!("{stdout}");
    // Whatever the run left running goes with the test.
    if let Ok(op) = daemon.client.remove_vm("v", true).await {
        let _ = daemon.client.wait(&op.id, |_| {}).await;
    }
    assert!(output.status.success(), "schemathesis found problems ({}):\n{stdout}\n{stderr}", output.status);
    // "1257 generated, 1257 passed": it did test something, and all passed.
    let summary = stdout.lines().find(|l| l.contains(" generated, ")).unwrap_or_default();
    let counts: Vec<&str> = summary.split_whitespace().collect();
    assert!(
        matches!(counts.as_slice(), [generated, "generated,", passed, "passed"] if generated == passed && *generated != "0"),
        "schemathesis's summary is not all passed: {summary:?}\n{stdout}"
    );
    let made: Vec<String> = daemon.client.vms().await.unwrap().into_iter().map(|v| v.name).collect();
    assert!(made.iter().all(|n| n == "v"), "fuzzing made VMs: {made:?}");
}

/// Kernel "k" (pulled from a loopback catalog), image "tiny" and VM "v".
async fn objects(daemon: &TestDaemon, server: &HttpServer) {
    let bundle = good_bundle("fuzz");
    daemon.set_catalog(vec![entry("k", &server.route("/k.tar.zst", Canned::ok(bundle.clone())), &bundle)]);
    let client = &daemon.client;
    let pull = client.pull_kernel(&KernelPullRequest { name: "k".into(), force: false }).await.unwrap();
    succeed(client, pull).await;
    succeed(client, client.build_image(&tiny_image("tiny", "k")).await.unwrap()).await;
    let create = VmCreateRequest { no_start: true, ..vm("v", "tiny") };
    succeed(client, client.create_vm(&create).await.unwrap()).await;
}

/// Listens on a loopback port and relays each connection to `socket`.
async fn bridge(socket: &Path) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let port = listener.local_addr().unwrap().port();
    let socket = socket.to_owned();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    port
}
