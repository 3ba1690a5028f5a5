//! `banger kernel list|show|pull|import|bundle|rm`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use banger_api::{
    CatalogEntry, CatalogEntryState, Kernel, KernelImportKind, KernelImportRequest, KernelPullRequest, OperationResult,
};
use clap::{ArgGroup, Subcommand};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{output, progress, Context};

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Kernels in the local store; with --available, the catalog.
    #[command(alias = "ls")]
    List {
        /// List the catalog instead, with each entry's state.
        #[arg(long)]
        available: bool,
    },
    /// One kernel's details.
    Show {
        /// Kernel name.
        name: String,
    },
    /// Download a kernel from the catalog.
    Pull {
        /// Catalog entry name.
        name: String,
        /// Replace a kernel of that name already in the store.
        #[arg(long)]
        force: bool,
    },
    /// Import a kernel from a vmlinux, a bzImage or a Debian package (.deb).
    #[command(group(ArgGroup::new("source").required(true).args(["file", "vmlinux", "bzimage", "deb"])))]
    Import {
        /// Name to store it under.
        name: String,
        /// The file; its kind is detected from its contents.
        file: Option<PathBuf>,
        /// An ELF vmlinux.
        #[arg(long, value_name = "FILE")]
        vmlinux: Option<PathBuf>,
        /// A compressed bzImage, such as /boot/vmlinuz-*.
        #[arg(long, value_name = "FILE")]
        bzimage: Option<PathBuf>,
        /// A Debian kernel package, such as `apt-get download linux-image-6.1.0-28-cloud-amd64` gives.
        #[arg(long, value_name = "FILE")]
        deb: Option<PathBuf>,
        /// A modules directory (/lib/modules/RELEASE) for the initramfs.
        #[arg(long, value_name = "DIR")]
        modules: Option<PathBuf>,
        /// Replace a kernel of that name already in the store.
        #[arg(long)]
        force: bool,
    },
    /// Write a kernel as a .tar.zst bundle and print its catalog entry.
    Bundle {
        /// Kernel name.
        name: String,
        /// Where to write the bundle.
        #[arg(short, long, value_name = "FILE.tar.zst")]
        output: PathBuf,
        /// The URL the bundle will be served from [default: a file:// URL of OUTPUT].
        #[arg(long)]
        url: Option<String>,
        /// The distribution, for the catalog entry.
        #[arg(long, default_value = "custom")]
        distro: String,
        /// A description, for the catalog entry.
        #[arg(long)]
        description: Option<String>,
    },
    /// Remove a kernel from the store.
    #[command(alias = "remove")]
    Rm {
        /// Kernel name.
        name: String,
        /// Remove it even if images or VMs boot it.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(command: KernelCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        KernelCommand::List { available: false } => {
            let kernels = ctx.client.kernels().await?;
            if ctx.json {
                return output::json(&kernels).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = kernels
                .iter()
                .map(|k| {
                    vec![
                        k.name.clone(),
                        k.kernel_version.clone().unwrap_or_else(|| "-".into()),
                        output::size(k.size_bytes),
                        if k.has_initrd { "yes" } else { "no" }.into(),
                        k.source.to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "VERSION", "SIZE", "INITRD", "SOURCE"], &rows);
        }
        KernelCommand::List { available: true } => {
            let listing = ctx.client.kernel_catalog().await?;
            if ctx.json {
                return output::json(&listing).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = listing
                .iter()
                .map(|l| {
                    let state = match l.state {
                        CatalogEntryState::Pulled => "pulled",
                        CatalogEntryState::Available => "available",
                    };
                    let e = &l.entry;
                    vec![
                        e.name.clone(),
                        e.distro.clone(),
                        e.kernel_version.clone(),
                        output::size(e.size_bytes),
                        state.into(),
                        e.description.clone(),
                    ]
                })
                .collect();
            output::table(&["NAME", "DISTRO", "VERSION", "SIZE", "STATE", "DESCRIPTION"], &rows);
        }
        KernelCommand::Show { name } => {
            let kernel = ctx.client.kernel(&name).await?;
            show(ctx, &kernel)?;
        }
        KernelCommand::Pull { name, force } => {
            let op = ctx.client.pull_kernel(&KernelPullRequest { name, force }).await?;
            finish(ctx, &op).await?;
        }
        KernelCommand::Import { name, file, vmlinux, bzimage, deb, modules, force } => {
            let (path, kind) = match (file, vmlinux, bzimage, deb) {
                (Some(f), ..) => (f, None),
                (_, Some(f), ..) => (f, Some(KernelImportKind::Vmlinux)),
                (_, _, Some(f), _) => (f, Some(KernelImportKind::Bzimage)),
                (_, _, _, Some(f)) => (f, Some(KernelImportKind::Deb)),
                _ => bail!("give the file to import"),
            };
            let request = KernelImportRequest {
                name,
                path: output::absolute(&path)?,
                kind,
                modules_dir: modules.as_deref().map(output::absolute).transpose()?,
                force,
            };
            let op = ctx.client.import_kernel(&request).await?;
            finish(ctx, &op).await?;
        }
        KernelCommand::Bundle { name, output: out, url, distro, description } => {
            let entry = bundle(ctx, &name, &out, url, distro, description).await?;
            output::json(&entry)?;
            if !ctx.json {
                eprintln!(
                    "wrote {} ({}); add the entry above to a catalog's \"entries\"",
                    out.display(),
                    output::size(entry.size_bytes)
                );
            }
        }
        KernelCommand::Rm { name, force } => {
            ctx.client.remove_kernel(&name, force).await?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!("removed kernel {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows a pull or import to its end and shows the kernel it made.
async fn finish(ctx: &Context, op: &banger_api::Operation) -> anyhow::Result<()> {
    let done = progress::follow(ctx, op).await?;
    let kernel: Kernel =
        done.result.and_then(OperationResult::into_kernel).context("the operation's result is not a kernel")?;
    if ctx.json {
        return output::json(&kernel);
    }
    println!(
        "kernel {} ready ({}, {})",
        kernel.name,
        kernel.kernel_version.as_deref().unwrap_or("unknown version"),
        output::size(kernel.size_bytes)
    );
    Ok(())
}

fn show(ctx: &Context, k: &Kernel) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(k);
    }
    println!("name:     {}", k.name);
    println!("version:  {}", k.kernel_version.as_deref().unwrap_or("-"));
    println!("source:   {}", k.source);
    println!("size:     {}", output::size(k.size_bytes));
    println!("vmlinux:  {} (sha256 {})", k.vmlinux_path, k.vmlinux_sha256);
    println!("initrd:   {}", k.initrd_path.as_deref().unwrap_or("none"));
    println!("created:  {}", k.created_at);
    Ok(())
}

/// Streams the daemon's bundle into `out` (via a temporary file, so a
/// failure leaves nothing), hashing as it goes.
async fn bundle(
    ctx: &Context,
    name: &str,
    out: &Path,
    url: Option<String>,
    distro: String,
    description: Option<String>,
) -> anyhow::Result<CatalogEntry> {
    let kernel = ctx.client.kernel(name).await?;
    let mut body = ctx.client.kernel_bundle(name).await?;
    let partial = out.with_extension("partial");
    let result = async {
        let mut file =
            tokio::fs::File::create(&partial).await.with_context(|| format!("cannot create {}", partial.display()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.context("bundle stream broke off")?.into_data() {
                hasher.update(&data);
                size += data.len() as u64;
                file.write_all(&data).await?;
            }
        }
        file.sync_all().await?;
        Ok::<_, anyhow::Error>((hasher.finalize(), size))
    }
    .await;
    let (digest, size) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).with_context(|| format!("cannot write {}", out.display()))?;
    let url = match url {
        Some(url) => url,
        None => format!("file://{}", output::absolute(out)?),
    };
    Ok(CatalogEntry {
        name: kernel.name.clone(),
        distro,
        arch: std::env::consts::ARCH.to_owned(),
        kernel_version: kernel.kernel_version.clone().unwrap_or_else(|| "unknown".into()),
        tarball_url: url,
        tarball_sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        size_bytes: size,
        description: description.unwrap_or_else(|| format!("Kernel {} bundled by banger", kernel.name)),
    })
}
