//! `kernel import` under hostile input, against the real bangerd binary:
//! devices, huge files and decompression bombs are refused with the
//! daemon's memory flat, and only real kernels and modules get in.

use std::path::Path;
use std::time::{Duration, Instant};

use banger_api::{ErrorCode, KernelImportKind, KernelImportRequest, OperationState};
use banger_testkit::bundles::{fake_bzimage, fake_module, fake_vmlinux, zstd_zeros, FAKE_RELEASE};
use banger_testkit::DaemonProcess;

/// How much the daemon's peak memory may grow while it refuses an input.
const FLAT_KIB: u64 = 64 * 1024;

fn request(name: &str, path: &Path, kind: Option<KernelImportKind>) -> KernelImportRequest {
    KernelImportRequest { name: name.into(), path: path.display().to_string(), kind, modules_dir: None, force: false }
}

async fn start() -> DaemonProcess {
    DaemonProcess::start(env!("CARGO_BIN_EXE_bangerd").as_ref(), "").await
}

/// The kernels directory's entries: nothing half-made may stay there.
fn kernel_entries(daemon: &DaemonProcess) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(daemon.state_dir().join("kernels"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_device_or_a_huge_file_is_refused_at_once_with_memory_flat() {
    let daemon = start().await;
    let before = daemon.peak_rss_kib();
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse-vmlinux");
    let file = std::fs::File::create(&sparse).unwrap();
    std::io::Write::write_all(&mut &file, &fake_vmlinux("sparse")).unwrap();
    file.set_len(4 << 30).unwrap();

    let socket = dir.path().join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());

    let cases: [(&str, &Path, Option<KernelImportKind>, ErrorCode, &str); 6] = [
        ("s", &socket, None, ErrorCode::InvalidArgument, "is a socket, not a regular file"),
        ("f", &fifo, None, ErrorCode::InvalidArgument, "is a FIFO, not a regular file"),
        (
            "z1",
            Path::new("/dev/zero"),
            Some(KernelImportKind::Vmlinux),
            ErrorCode::InvalidArgument,
            "a character device",
        ),
        ("z2", Path::new("/dev/zero"), None, ErrorCode::InvalidArgument, "not a regular file"),
        ("z3", dir.path(), Some(KernelImportKind::Deb), ErrorCode::InvalidArgument, "a directory"),
        ("big", &sparse, None, ErrorCode::TooLarge, "larger than the limit of 512 MiB"),
    ];
    for (name, path, kind, code, says) in cases {
        let started = Instant::now();
        let err = daemon.client.import_kernel(&request(name, path, kind)).await.expect_err("refused before it starts");
        let took = started.elapsed();
        let api = err.api().unwrap_or_else(|| panic!("{name}: not an API error: {err}"));
        assert_eq!(api.code, code, "{name}: {}", api.message);
        assert!(api.message.contains(says), "{name}: {}", api.message);
        assert!(took < Duration::from_secs(2), "{name} took {took:?}");
        eprintln!("{name} ({}): refused in {took:.2?}: {}", path.display(), api.message);
    }
    let after = daemon.peak_rss_kib();
    eprintln!("peak RSS {before} KiB before, {after} KiB after");
    assert!(after < before + FLAT_KIB, "peak RSS grew from {before} KiB to {after} KiB");
    assert_eq!(kernel_entries(&daemon), Vec::<String>::new());
}

#[tokio::test]
async fn a_bzimage_bomb_stops_at_the_limit_with_memory_flat() {
    let daemon = start().await;
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.bzImage");
    std::fs::write(&bomb, fake_bzimage(&zstd_zeros(2 << 30))).unwrap();
    let error = import_fails_with_memory_flat(&daemon, "bomb", &bomb, "bomb (2 GiB of zeros)").await;
    assert_eq!(error.code, ErrorCode::TooLarge, "{}", error.message);
    assert!(
        error.message.contains("decompressed kernel payload is larger than the limit of 512 MiB"),
        "{}",
        error.message
    );
}

/// Imports `path` as kernel `name`, which is accepted and then fails;
/// asserts the daemon's peak RSS stayed flat and nothing was left in the
/// kernel store; the failure.
async fn import_fails_with_memory_flat(
    daemon: &DaemonProcess,
    name: &str,
    path: &Path,
    what: &str,
) -> banger_api::ApiError {
    let before = daemon.peak_rss_kib();
    let started = Instant::now();
    let op = daemon.client.import_kernel(&request(name, path, None)).await.expect("the import is accepted");
    let done = tokio::time::timeout(Duration::from_secs(120), daemon.client.wait(&op.id, |_| {}))
        .await
        .expect("the import ends")
        .unwrap();
    let after = daemon.peak_rss_kib();
    eprintln!(
        "{what} ({} bytes): {:?} in {:.2?}, peak RSS {before} KiB before, {after} KiB after",
        std::fs::metadata(path).unwrap().len(),
        done.error,
        started.elapsed()
    );
    assert_eq!(done.state, OperationState::Failed);
    assert!(after < before + FLAT_KIB, "peak RSS grew from {before} KiB to {after} KiB");
    assert_eq!(kernel_entries(daemon), Vec::<String>::new(), "the staging directory is gone");
    done.error.expect("the failure says why")
}

#[tokio::test]
async fn only_real_kernels_get_in() {
    let daemon = start().await;
    let dir = tempfile::tempdir().unwrap();
    let twenty = dir.path().join("elf20");
    std::fs::write(&twenty, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0").unwrap();
    let err = daemon.client.import_kernel(&request("z3", &twenty, None)).await.expect_err("20 bytes are no kernel");
    let api = err.api().unwrap();
    assert_eq!(api.code, ErrorCode::BadArchive, "{}", api.message);
    assert!(api.message.contains("is not a Linux kernel"), "{}", api.message);

    let agent_like = dir.path().join("static-binary");
    let mut elf = fake_vmlinux("no notes");
    elf[0x38] = 0; // no program headers, so no Linux notes
    std::fs::write(&agent_like, elf).unwrap();
    let err = daemon.client.import_kernel(&request("z4", &agent_like, None)).await.expect_err("no Linux notes");
    assert!(err.api().unwrap().message.contains("is not a Linux kernel"), "{err}");

    let good = dir.path().join("vmlinux");
    std::fs::write(&good, fake_vmlinux("good")).unwrap();
    let op = daemon.client.import_kernel(&request("good", &good, None)).await.unwrap();
    let done = daemon.client.wait(&op.id, |_| {}).await.unwrap();
    assert_eq!(done.state, OperationState::Succeeded, "{:?}", done.error);
    let kernel = daemon.client.kernel("good").await.unwrap();
    assert_eq!(kernel.kernel_version.as_deref(), Some(FAKE_RELEASE));
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(fake_vmlinux("good")));
    assert_eq!(kernel.vmlinux_sha256, digest.iter().map(|b| format!("{b:02x}")).collect::<String>());
    assert_eq!(kernel_entries(&daemon), ["good"]);
}

#[tokio::test]
async fn a_modules_dir_gives_only_its_modules_to_the_bundle() {
    let daemon = start().await;
    let dir = tempfile::tempdir().unwrap();
    let vmlinux = dir.path().join("vmlinux");
    std::fs::write(&vmlinux, fake_vmlinux("mods")).unwrap();
    let mods = dir.path().join(FAKE_RELEASE);
    std::fs::create_dir_all(mods.join("kernel/fs")).unwrap();
    std::fs::create_dir_all(mods.join("etc/ssh")).unwrap();
    std::fs::write(mods.join("kernel/fs/dummy.ko"), fake_module("dummy")).unwrap();
    std::fs::write(mods.join("modules.order"), "kernel/fs/dummy.ko\n").unwrap();
    std::fs::write(mods.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(mods.join("etc/ssh/ssh_host_ed25519_key"), "secret key\n").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", mods.join("shadow")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", mods.join("kernel/fs/shadow.ko")).unwrap();
    std::os::unix::fs::symlink("/etc", mods.join("kernel/etc")).unwrap();

    let mut import = request("m", &vmlinux, None);
    import.modules_dir = Some(mods.display().to_string());
    let op = daemon.client.import_kernel(&import).await.unwrap();
    let done = daemon.client.wait(&op.id, |_| {}).await.unwrap();
    assert_eq!(done.state, OperationState::Succeeded, "{:?}", done.error);

    let mut body = daemon.client.kernel_bundle("m").await.unwrap();
    let mut bundle = Vec::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(data) = frame.unwrap().into_data() {
            bundle.extend_from_slice(&data);
        }
    }
    let out = tempfile::tempdir().unwrap();
    banger_kernel::bundle::extract(&bundle[..], out.path(), 1 << 30).unwrap();
    let mut files = Vec::new();
    walk(out.path(), out.path(), &mut files);
    files.sort();
    let modules = format!("modules/{FAKE_RELEASE}");
    assert_eq!(files, [format!("{modules}/kernel/fs/dummy.ko"), format!("{modules}/modules.order"), "vmlinux".into()]);

    // A tree without a single module is refused, and leaves nothing behind.
    let empty = dir.path().join("empty").join(FAKE_RELEASE);
    std::fs::create_dir_all(empty.join("etc")).unwrap();
    std::fs::write(empty.join("etc/passwd"), "root:x:0:0\n").unwrap();
    import.name = "none".into();
    import.modules_dir = Some(empty.display().to_string());
    let op = daemon.client.import_kernel(&import).await.unwrap();
    let done = daemon.client.wait(&op.id, |_| {}).await.unwrap();
    assert_eq!(done.state, OperationState::Failed);
    assert!(done.error.unwrap().message.contains("holds no kernel modules"));
    assert_eq!(kernel_entries(&daemon), ["m"]);
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            walk(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

/// An ar archive holding `members`, as a `.deb` is.
fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let header = format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, 0, 0, 0, 100644, data.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

#[tokio::test]
async fn a_package_whose_tar_holds_a_huge_long_name_is_refused_with_memory_flat() {
    let daemon = start().await;
    let dir = tempfile::tempdir().unwrap();
    // data.tar: a GNU long-name entry claiming 3 GiB, then 3 GiB of zeros,
    // zstd-compressed: the tar crate would read that name whole.
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_size(3 << 30);
    header.set_cksum();
    let data_tar = banger_testkit::bundles::zstd_zeros_after(header.as_bytes(), 3 << 30);
    let deb = dir.path().join("longname.deb");
    std::fs::write(&deb, ar(&[("debian-binary", b"2.0\n"), ("data.tar.zst", &data_tar)])).unwrap();
    let error = import_fails_with_memory_flat(&daemon, "ln", &deb, "long-name bomb").await;
    assert_eq!(error.code, ErrorCode::BadArchive, "{}", error.message);
    assert!(error.message.contains("larger than 64 KiB"), "{}", error.message);
}
