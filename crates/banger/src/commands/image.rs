//! `banger image build|register|list|show|rm`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use banger_api::{Image, ImageBuildRequest, ImageRecipe, ImageRegisterRequest, OperationResult};
use clap::{ArgGroup, Subcommand, ValueEnum};

use crate::{output, progress, size, Context};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RecipeArg {
    /// Busybox and the banger agent as PID 1; built in seconds.
    Tiny,
    /// Debian (minbase, debootstrap) with openssh-server and the agent.
    Debian,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from a recipe, a root directory or a root tarball.
    #[command(group(ArgGroup::new("source").required(true).args(["recipe", "from_dir", "from_tar"])))]
    Build {
        /// Name of the image.
        name: String,
        /// A recipe.
        #[arg(long, value_enum)]
        recipe: Option<RecipeArg>,
        /// A root filesystem directory.
        #[arg(long, value_name = "DIR")]
        from_dir: Option<PathBuf>,
        /// A root filesystem tarball (.tar, .tar.gz, .tar.zst).
        #[arg(long, value_name = "FILE")]
        from_tar: Option<PathBuf>,
        /// The kernel VMs boot by default: a local kernel or a catalog entry (pulled if needed).
        #[arg(long = "kernel-ref", value_name = "KERNEL")]
        kernel: String,
        /// Size of the root filesystem (default: what it needs plus headroom).
        #[arg(long, value_parser = size::parse)]
        size: Option<u64>,
        /// Replace an image of that name.
        #[arg(long)]
        force: bool,
    },
    /// Register an existing ext4 root filesystem as an image (it is copied into the store).
    Register {
        /// Name of the image.
        name: String,
        /// The ext4 file.
        #[arg(long, value_name = "FILE.ext4")]
        rootfs: PathBuf,
        /// The kernel VMs boot by default: a local kernel or a catalog entry (pulled if needed).
        #[arg(long = "kernel-ref", value_name = "KERNEL")]
        kernel: String,
        /// The init the kernel runs (default /sbin/init).
        #[arg(long)]
        init: Option<String>,
        /// Replace an image of that name.
        #[arg(long)]
        force: bool,
    },
    /// Images in the store.
    #[command(alias = "ls")]
    List,
    /// One image's details.
    Show {
        /// Image name.
        name: String,
    },
    /// Remove the cached work-disk seeds no VM uses (they also go when their last VM is removed).
    Prune,
    /// Remove an image.
    #[command(alias = "remove")]
    Rm {
        /// Image name.
        name: String,
        /// Remove it even if VMs were made from it: they keep their own disks but cannot be recreated from it.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(command: ImageCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Build { name, recipe, from_dir, from_tar, kernel, size, force } => {
            let request = ImageBuildRequest {
                name,
                recipe: recipe.map(|r| match r {
                    RecipeArg::Tiny => ImageRecipe::Tiny,
                    RecipeArg::Debian => ImageRecipe::Debian,
                }),
                from_dir: from_dir.as_deref().map(output::absolute).transpose()?,
                from_tar: from_tar.as_deref().map(output::absolute).transpose()?,
                kernel,
                size_bytes: size,
                force,
            };
            let op = ctx.client.build_image(&request).await?;
            finish(ctx, &op).await?;
        }
        ImageCommand::Register { name, rootfs, kernel, init, force } => {
            let request = ImageRegisterRequest { name, rootfs: output::absolute(&rootfs)?, kernel, init, force };
            let op = ctx.client.register_image(&request).await?;
            finish(ctx, &op).await?;
        }
        ImageCommand::List => {
            let images = ctx.client.images().await?;
            if ctx.json {
                return output::json(&images).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.kernel.clone(),
                        output::size(i.size_bytes),
                        i.source.to_string(),
                        i.created_at.to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "KERNEL", "SIZE", "SOURCE", "CREATED"], &rows);
        }
        ImageCommand::Show { name } => show(ctx, &ctx.client.image(&name).await?)?,
        ImageCommand::Prune => {
            let report = ctx.client.prune_images().await?;
            if ctx.json {
                return output::json(&report).map(|_| ExitCode::SUCCESS);
            }
            println!(
                "removed {} unused work-disk seed(s), freed {}",
                report.removed.len(),
                output::size(report.freed_bytes)
            );
        }
        ImageCommand::Rm { name, force } => {
            ctx.client.remove_image(&name, force).await?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!("removed image {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn finish(ctx: &Context, op: &banger_api::Operation) -> anyhow::Result<()> {
    let done = progress::follow(ctx, op).await?;
    let image: Image =
        done.result.and_then(OperationResult::into_image).context("the operation's result is not an image")?;
    if ctx.json {
        return output::json(&image);
    }
    println!("image {} ready ({}, kernel {})", image.name, output::size(image.size_bytes), image.kernel);
    Ok(())
}

fn show(ctx: &Context, i: &Image) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(i);
    }
    println!("name:     {}", i.name);
    println!("kernel:   {}", i.kernel);
    println!("source:   {}", i.source);
    println!("init:     {}", i.init);
    println!("size:     {}", output::size(i.size_bytes));
    println!("rootfs:   {}", i.rootfs_path);
    println!("created:  {}", i.created_at);
    Ok(())
}
