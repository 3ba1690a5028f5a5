//! SSH with no prompt, through the built CLI and the real OpenSSH client,
//! against a real debian guest's sshd under QEMU: `ssh-config install`
//! (once, into a temporary HOME), `ssh` and `scp` with
//! StrictHostKeyChecking=yes through banger's ProxyCommand, `vm ssh`, a
//! swapped guest host key refused, and the tiny image (no sshd) answered
//! clearly.

mod support;

use std::path::Path;
use std::process::Output;

use banger_api::{ImageBuildRequest, ImageRecipe, VmCreateRequest};
use banger_testkit::requests::{succeed, vm};
use support::{guest_with_config, text, Guest, TEST_TIMEOUT};

#[tokio::test(flavor = "multi_thread")]
async fn ssh_reaches_a_debian_guest_with_pinned_keys_and_no_prompt() {
    // Debootstrap (a few minutes) and a systemd boot under TCG come on top.
    banger_testkit::with_timeout(TEST_TIMEOUT * 2, body()).await;
}

/// Runs `program` with `HOME` at `home` (so banger's files go there).
async fn run(home: &Path, program: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("BANGER_SOCKET")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("the program runs")
}

fn ssh_args<'a>(config: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args =
        vec!["-F", config, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=60"];
    args.extend(rest);
    args
}

async fn body() {
    let Some(g) = guest_with_config("tiny", 256, None, "").await else { return };
    let home = tempfile::tempdir().unwrap();
    let banger = |args: Vec<String>| {
        let mut all = vec!["--socket".to_owned(), g.socket.display().to_string()];
        all.extend(args);
        all
    };

    // The tiny image has no sshd: said plainly.
    let args = banger(vec!["vm".into(), "ssh".into(), "tiny".into()]);
    let out =
        run(home.path(), env!("CARGO_BIN_EXE_banger"), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("VM tiny runs no SSH server"), "{}", text(&out.stderr));

    let dev = debian_guest(&g).await;

    // Installed twice: one Include line, the user's own lines kept.
    let ssh_dir = home.path().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::write(ssh_dir.join("config"), "Host elsewhere\n    User me\n").unwrap();
    for _ in 0..2 {
        let args = banger(vec!["ssh-config".into(), "install".into()]);
        let out =
            run(home.path(), env!("CARGO_BIN_EXE_banger"), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let user_config = std::fs::read_to_string(ssh_dir.join("config")).unwrap();
    assert_eq!(user_config.matches("Include").count(), 1, "{user_config}");
    assert!(user_config.ends_with("Host elsewhere\n    User me\n"), "{user_config}");
    let config = ssh_dir.join("config").display().to_string();

    // ssh and scp through the user's config (its Include), host key pinned.
    let out = run(home.path(), "ssh", &ssh_args(&config, &[&dev, "cat", "/etc/hostname", ";", "id", "-un"])).await;
    assert!(out.status.success(), "ssh failed: {}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with("root\n"), "{}", text(&out.stdout));
    let file = home.path().join("payload");
    std::fs::write(&file, b"across with scp\n").unwrap();
    let to = format!("{dev}:/tmp/payload");
    let out = run(home.path(), "scp", &ssh_args(&config, &[file.to_str().unwrap(), &to])).await;
    assert!(out.status.success(), "scp failed: {}", text(&out.stderr));
    assert_eq!(g.daemon.client.exec("dev", &["cat", "/tmp/payload"], b"").await.unwrap().stdout, b"across with scp\n");

    // The short form.
    let args = banger(vec!["vm".into(), "ssh".into(), "dev".into(), "--".into(), "echo".into(), "hello".into()]);
    let out =
        run(home.path(), env!("CARGO_BIN_EXE_banger"), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");

    // A forward through the CLI: the guest's sshd greets on the host's loopback.
    let cli = |args: &[&str]| {
        let mut all: Vec<String> = banger(Vec::new());
        all.extend(args.iter().map(|a| a.to_string()));
        all
    };
    for (args, wanted) in [
        (cli(&["vm", "forward", "dev", "18022:22"]), "127.0.0.1:18022 -> dev.vm:22"),
        (cli(&["vm", "forward", "dev", "--list"]), "127.0.0.1:18022"),
    ] {
        let out =
            run(home.path(), env!("CARGO_BIN_EXE_banger"), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert!(
            out.status.success() && text(&out.stdout).contains(wanted),
            "{args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let mut greeting = [0u8; 8];
    let mut socket = tokio::net::TcpStream::connect("127.0.0.1:18022").await.unwrap();
    tokio::io::AsyncReadExt::read_exact(&mut socket, &mut greeting).await.unwrap();
    assert_eq!(&greeting, b"SSH-2.0-");
    drop(socket);
    let args = cli(&["vm", "forward", "dev", "--rm", "18022"]);
    let out =
        run(home.path(), env!("CARGO_BIN_EXE_banger"), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(tokio::net::TcpStream::connect("127.0.0.1:18022").await.is_err(), "the forward is gone");

    // A guest whose host key is not the one banger made is refused.
    let swap = "rm -f /etc/ssh/banger_host_ed25519_key* && \
        ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/banger_host_ed25519_key && systemctl restart ssh";
    let swapped = g.daemon.client.exec("dev", &["sh", "-c", swap], b"").await.unwrap();
    assert_eq!(swapped.code, Some(0), "{}", text(&swapped.stderr));
    let out = run(home.path(), "ssh", &ssh_args(&config, &[&dev, "true"])).await;
    assert!(!out.status.success(), "ssh trusted a swapped host key");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Host key verification failed") || stderr.contains("IDENTIFICATION HAS CHANGED"),
        "{stderr}"
    );

    succeed(&g.daemon.client, g.daemon.client.remove_vm("dev", true).await.unwrap()).await;
    g.remove().await;
}

/// Builds the debian image (debootstrap) and boots VM `dev` from it;
/// returns its ssh host name.
async fn debian_guest(g: &Guest) -> String {
    let client = &g.daemon.client;
    let build = ImageBuildRequest {
        name: "debian".into(),
        recipe: Some(ImageRecipe::Debian),
        from_dir: None,
        from_tar: None,
        kernel: banger_testkit::shared_kernel::NAME.into(),
        size_bytes: None,
        force: false,
    };
    succeed(client, client.build_image(&build).await.unwrap()).await;
    let request = VmCreateRequest { memory_mib: Some(512), ..vm("dev", "debian") };
    succeed(client, client.create_vm(&request).await.unwrap()).await;
    // sshd starts beside the agent under systemd: wait for its port.
    support::eventually(std::time::Duration::from_secs(120), "sshd listening", || async {
        let ports = client.vm_ports("dev").await.ok()?;
        ports.iter().any(|p| p.protocol == "tcp" && p.port == 22).then_some(())
    })
    .await;
    "dev.vm".into()
}
