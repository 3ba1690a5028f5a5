//! `kernel pull`: stream a bundle over HTTP (or from a file), hashing it as
//! it arrives, while a blocking thread decompresses and extracts it into a
//! staging directory. Download and extraction overlap, so a pull costs
//! about as much as the slower of the two.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use banger_api::{CatalogEntry, Kernel};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::catalog::error_chain;
use super::store::{hex, KernelLock};
use crate::error::{Error, Result};
use crate::operations::OperationHandle;
use crate::Daemon;

/// Chunks in flight between the download and the extraction.
const PIPELINE_DEPTH: usize = 64;

/// Pulls catalog `entry` into the store under its name.
pub async fn pull(daemon: Arc<Daemon>, op: &OperationHandle, entry: CatalogEntry, lock: KernelLock) -> Result<Kernel> {
    let staging = daemon.kernels.staging(&entry.name, op.id())?;
    let (body, total) = open_source(&daemon.http, &entry.tarball_url).await?;
    let total = total.or(Some(entry.size_bytes).filter(|&n| n > 0));

    let (tx, rx) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let dest = staging.path().to_path_buf();
    let limit = daemon.config.max_bundle_bytes;
    let extraction = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader { rx, current: Bytes::new() };
        let extracted = banger_kernel::bundle::extract(&mut reader, &dest, limit);
        // tar stops at its end-of-archive marker; read the rest so the
        // download completes and its checksum is compared.
        if extracted.is_ok() {
            let _ = io::copy(&mut reader, &mut io::sink());
        }
        extracted
    });

    let download = download(body, tx, op, total).await;
    let extracted = extraction.await.map_err(|e| Error::Internal(format!("extraction task: {e}")))?;

    // The download's fate decides which error the user hears: a failed
    // download or a wrong checksum explain any extraction error they cause.
    let digest = match download {
        Download::Failed(reason) => return Err(Error::Download { url: entry.tarball_url, reason }),
        Download::Abandoned => {
            return Err(extracted
                .err()
                .map(Error::from)
                .unwrap_or_else(|| Error::Internal("extraction stopped early".into())))
        }
        Download::Complete(digest) => digest,
    };
    if digest != entry.tarball_sha256 {
        return Err(Error::ChecksumMismatch { url: entry.tarball_url, expected: entry.tarball_sha256, actual: digest });
    }
    extracted?;
    op.step("install");
    let source = banger_api::KernelSource::Pull(entry.tarball_url.clone());
    let daemon2 = Arc::clone(&daemon);
    let name = entry.name.clone();
    let version = Some(entry.kernel_version);
    tokio::task::spawn_blocking(move || daemon2.kernels.install(&lock, &name, staging, version, None, source))
        .await
        .map_err(|e| Error::Internal(format!("install task: {e}")))?
}

enum Download {
    Complete(String),
    Failed(String),
    /// The extraction stopped reading (it failed); its error is the story.
    Abandoned,
}

async fn download(
    mut body: impl Stream<Item = io::Result<Bytes>> + Unpin,
    tx: mpsc::Sender<Bytes>,
    op: &OperationHandle,
    total: Option<u64>,
) -> Download {
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return Download::Failed(error_chain(&e)),
        };
        hasher.update(&chunk);
        done += chunk.len() as u64;
        if tx.send(chunk).await.is_err() {
            return Download::Abandoned;
        }
        op.bytes(done, total);
    }
    op.bytes(done, total);
    Download::Complete(hex(&hasher.finalize()))
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Opens a bundle source: http(s) URL, `file://` URL or plain path.
async fn open_source(http: &reqwest::Client, url: &str) -> Result<(ByteStream, Option<u64>)> {
    let failed = |reason: String| Error::Download { url: url.to_owned(), reason };
    if url.starts_with("http://") || url.starts_with("https://") {
        let response = http.get(url).send().await.map_err(|e| failed(error_chain(&e.without_url())))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        let length = response.content_length();
        let stream = response.bytes_stream().map(|r| r.map_err(|e| io::Error::other(error_chain(&e.without_url()))));
        return Ok((Box::pin(stream), length));
    }
    let path = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
    let file = tokio::fs::File::open(&path).await.map_err(|e| failed(e.to_string()))?;
    let length = file.metadata().await.ok().map(|m| m.len());
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    Ok((Box::pin(stream), length))
}

/// A blocking `Read` over the chunks the download sends.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
