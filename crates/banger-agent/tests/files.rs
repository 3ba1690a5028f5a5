//! File copies through the agent binary: a tree out as a tar stream and
//! back in (modes, owners, symlinks, mtimes kept), refusals, and a copy
//! abandoned half way leaving nothing behind. Also stats and ports.

mod common;

use std::fs;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use banger_agent_proto::mux::Event;
use banger_agent_proto::{ErrorKind, FrameKind, Reply, Request};
use bytes::Bytes;
use common::*;

/// The tar stream of a `copy_out`, and its last reply.
async fn copy_out(client: &Client, path: &Path) -> (Vec<u8>, Reply) {
    let mut stream = client.open(&Request::CopyOut { path: path.display().to_string() }).await;
    let mut tar = Vec::new();
    loop {
        match event(&mut stream).await.expect("the copy ended without a reply") {
            Event::Data { kind: FrameKind::Stdout, bytes, .. } => tar.extend(&bytes),
            Event::Data { kind, .. } => panic!("{kind:?} data"),
            event => return (tar, event.message().expect("a reply")),
        }
    }
}

async fn copy_in(client: &Client, dest: &Path, tar: Vec<u8>) -> Reply {
    let mut stream = client.open(&Request::CopyIn { dest: dest.display().to_string() }).await;
    let sender = stream.sender();
    let feeding = tokio::spawn(async move {
        // Fails if the agent refused at once and closed; the reply says why.
        let _ = sender.write(FrameKind::Stdin, Bytes::from(tar)).await;
        let _ = sender.finish(FrameKind::Stdin).await;
    });
    let reply = next_reply(&mut stream).await;
    feeding.abort();
    reply
}

fn set_mtime(path: &Path, secs: u64) {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    fs::File::open(path).unwrap().set_modified(time).unwrap();
}

fn is_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A small tree with what a copy must keep.
fn make_tree(top: &Path) {
    fs::create_dir_all(top.join("sub/empty")).unwrap();
    fs::write(top.join("sub/file"), b"some content\n").unwrap();
    fs::write(top.join("exe"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::write(top.join("big"), (0..3_000_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    symlink("sub/file", top.join("link")).unwrap();
    symlink("/etc/hostname", top.join("absolute-link")).unwrap();
    symlink("nowhere", top.join("dangling")).unwrap();
    fs::set_permissions(top.join("sub/file"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(top.join("exe"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(top.join("sub"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(top, fs::Permissions::from_mode(0o750)).unwrap();
    if is_root() {
        lchown(top.join("sub/file"), Some(1234), Some(5678)).unwrap();
        lchown(top.join("link"), Some(4321), Some(8765)).unwrap();
    }
    for (path, secs) in
        [("sub/file", 1_500_000_000), ("exe", 1_500_000_100), ("sub", 1_500_000_200), (".", 1_500_000_300)]
    {
        set_mtime(&top.join(path), secs);
    }
}

/// Every entry below `top`: (relative path, mode, uid, gid, mtime, link target or content hash).
fn describe(top: &Path) -> Vec<(String, u32, u32, u32, i64, String)> {
    let mut out = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            let mut children: Vec<_> = fs::read_dir(&path).unwrap().flatten().map(|e| e.path()).collect();
            children.sort();
            stack.extend(children);
            "dir".to_string()
        } else {
            let bytes = fs::read(&path).unwrap();
            format!("{} bytes, sum {}", bytes.len(), bytes.iter().map(|b| u64::from(*b)).sum::<u64>())
        };
        let name = path.strip_prefix(top).unwrap().display().to_string();
        // A symlink's own mtime is kept too, but its mode means nothing.
        let mode = if meta.file_type().is_symlink() { 0 } else { meta.mode() & 0o7777 };
        out.push((name, mode, meta.uid(), meta.gid(), meta.mtime(), what));
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_tree_goes_out_and_back_in_unchanged() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    make_tree(&tree);
    let (tar, reply) = copy_out(&client, &tree).await;
    assert_eq!(reply, Reply::Done);
    assert!(tar.len() > 12_000_000, "the tree's bytes are all there ({} bytes)", tar.len());
    // Into an existing directory: it keeps its name.
    let into = work.path().join("into");
    fs::create_dir(&into).unwrap();
    assert_eq!(copy_in(&client, &into, tar.clone()).await, Reply::Done);
    assert_eq!(describe(&into.join("tree")), describe(&tree));
    // As a new name.
    let renamed = work.path().join("renamed");
    assert_eq!(copy_in(&client, &renamed, tar).await, Reply::Done);
    assert_eq!(describe(&renamed), describe(&tree));
    if is_root() {
        let owner = fs::metadata(renamed.join("sub/file")).unwrap();
        assert_eq!((owner.uid(), owner.gid()), (1234, 5678));
    }
    // One file, and a symlink as the top entry: sent as a symlink.
    let (tar, reply) = copy_out(&client, &tree.join("link")).await;
    assert_eq!(reply, Reply::Done);
    let single = work.path().join("single-link");
    assert_eq!(copy_in(&client, &single, tar).await, Reply::Done);
    assert_eq!(fs::read_link(&single).unwrap(), Path::new("sub/file"));
}

#[tokio::test]
async fn bad_copies_are_refused_with_what_went_wrong() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let work = tempfile::tempdir().unwrap();
    let (tar, reply) = copy_out(&client, &work.path().join("missing")).await;
    assert!(tar.is_empty());
    assert!(matches!(reply, Reply::Error { kind: ErrorKind::NotFound, .. }), "{reply:?}");
    let reply = copy_in(&client, &work.path().join("no/such/dir"), Vec::new()).await;
    assert!(matches!(reply, Reply::Error { kind: ErrorKind::NotFound, .. }), "{reply:?}");
    let reply = copy_in(&client, Path::new("relative"), Vec::new()).await;
    assert!(matches!(reply, Reply::Error { kind: ErrorKind::InvalidArgument, .. }), "{reply:?}");
    let dest = work.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let Reply::Error { kind, message } = copy_in(&client, &dest, vec![b'x'; 5000]).await else { panic!() };
    assert_eq!(kind, ErrorKind::InvalidArgument, "{message}");
    assert!(message.contains("tar"), "{message}");
    // A real tree cut short: what was written of it goes.
    let tree = work.path().join("tree");
    make_tree(&tree);
    let (mut tar, _) = copy_out(&client, &tree).await;
    tar.truncate(tar.len() / 2);
    let Reply::Error { kind, message } = copy_in(&client, &dest, tar).await else { panic!() };
    assert_eq!(kind, ErrorKind::InvalidArgument, "{message}");
    assert!(fs::read_dir(&dest).unwrap().next().is_none(), "a failed copy left files behind");
}

/// A client that goes away half way through a copy in leaves nothing.
#[tokio::test]
async fn an_abandoned_copy_leaves_nothing() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    make_tree(&tree);
    let (tar, _) = copy_out(&client, &tree).await;
    let dest = work.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let mut stream = client.open(&Request::CopyIn { dest: dest.display().to_string() }).await;
    stream.write(FrameKind::Stdin, Bytes::copy_from_slice(&tar[..tar.len() / 2])).await.unwrap();
    // Wait until the agent has begun writing, then leave.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while fs::read_dir(&dest).unwrap().next().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "nothing was written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stream.reset("the client went away");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while fs::read_dir(&dest).unwrap().next().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned copy left {:?}",
            fs::read_dir(&dest).unwrap().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn stats_and_ports_describe_the_machine() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let Reply::Stats(stats) = client.request(&Request::Stats).await else { panic!("no stats") };
    assert!(stats.cpus >= 1 && stats.memory.total > stats.memory.available && stats.uptime_secs > 0.0, "{stats:?}");
    assert!(stats.cpu.total() > 0 && stats.load.iter().all(|l| *l >= 0.0), "{stats:?}");
    assert!(stats.net.iter().all(|n| n.interface != "lo"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let Reply::Ports { ports } = client.request(&Request::Ports).await else { panic!("no ports") };
    let ours = ports.iter().find(|p| p.protocol == "tcp" && p.port == port).expect("our listener is listed");
    assert_eq!(ours.address, "127.0.0.1");
    assert_eq!(ours.pid, Some(std::process::id()));
    assert!(ours.process.as_deref().is_some_and(|p| !p.is_empty()));
}
