//! `banger ssh-config` and `banger vm ssh`: the user's ssh reaches every VM
//! through banger (a ProxyCommand carrying the connection over the agent
//! channel, so no DNS or guest network is needed) with banger's key and
//! the VMs' host keys pinned, so there is no prompt and no trust on first
//! use. banger's files live in `~/.config/banger/ssh/`; `install` adds one
//! `Include` line to `~/.ssh/config` and touches none of the user's lines.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use banger_api::SshInfo;

use crate::Context;

/// The comment that marks banger's line in `~/.ssh/config`.
const INCLUDE_MARK: &str = "# Added by `banger ssh-config install`: ssh to NAME.vm through banger.";

/// `banger ssh-config ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SshConfigCommand {
    /// Write banger's ssh config and add one `Include` line for it at the
    /// top of ~/.ssh/config (once; the rest of the file is left as it is).
    Install {
        /// Use this key of yours (its `.pub` beside it) instead of banger's;
        /// it is let into each VM from its next boot.
        #[arg(long, value_name = "KEY")]
        identity: Option<PathBuf>,
    },
    /// Remove banger's `Include` line from ~/.ssh/config.
    Uninstall,
    /// Print banger's ssh config.
    Show,
    /// ssh's ProxyCommand: update the VMs' host keys, then carry one
    /// connection to PORT of VM HOST (`NAME.vm`) on stdin and stdout.
    #[command(hide = true)]
    Proxy {
        /// The host as ssh has it (`NAME.vm`).
        host: String,
        /// The port.
        port: u16,
    },
}

/// Runs an `ssh-config` command.
pub async fn run(command: SshConfigCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        SshConfigCommand::Install { identity } => install(ctx, identity).await?,
        SshConfigCommand::Uninstall => uninstall()?,
        SshConfigCommand::Show => show(ctx).await?,
        SshConfigCommand::Proxy { host, port } => return proxy(ctx, &host, port).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// banger's SSH files for this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPaths {
    /// `~/.config/banger/ssh`.
    pub dir: PathBuf,
    /// The ssh config for `Host *.vm`.
    pub config: PathBuf,
    /// banger's private key (its public half beside it, `.pub`).
    pub key: PathBuf,
    /// The VMs' host keys.
    pub known_hosts: PathBuf,
}

impl SshPaths {
    /// Under `$XDG_CONFIG_HOME/banger/ssh`, else `~/.config/banger/ssh`.
    pub fn for_user() -> anyhow::Result<SshPaths> {
        let config_home = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => home()?.join(".config"),
        };
        Ok(SshPaths::under(&config_home.join("banger/ssh")))
    }

    fn under(dir: &Path) -> SshPaths {
        SshPaths {
            dir: dir.to_owned(),
            config: dir.join("config"),
            key: dir.join("id_ed25519"),
            known_hosts: dir.join("known_hosts"),
        }
    }
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).context("HOME is not set")
}

/// The ssh config banger writes: every `*.vm` host through banger's proxy.
pub fn config_text(banger: &Path, socket: &Path, paths: &SshPaths, identity: Option<&Path>) -> String {
    let identity = identity.unwrap_or(&paths.key);
    format!(
        "# Written by banger (`banger ssh-config install`); it is rewritten, do not edit.\n\
         Host *.vm\n\
         \x20   User root\n\
         \x20   ProxyCommand \"{banger}\" --socket \"{socket}\" ssh-config proxy %h %p\n\
         \x20   IdentityFile \"{identity}\"\n\
         \x20   IdentitiesOnly yes\n\
         \x20   UserKnownHostsFile \"{known_hosts}\"\n\
         \x20   StrictHostKeyChecking yes\n\
         \x20   HostKeyAlgorithms ssh-ed25519\n\
         \x20   CheckHostIP no\n",
        banger = banger.display(),
        socket = socket.display(),
        identity = identity.display(),
        known_hosts = paths.known_hosts.display(),
    )
}

/// `existing` (the user's ~/.ssh/config) with banger's `Include` first,
/// where it applies to every host; `None` when it is there already.
pub fn with_include(existing: &str, config: &Path) -> Option<String> {
    let include = format!("Include \"{}\"", config.display());
    if existing.lines().any(|l| l.trim() == include) {
        return None;
    }
    Some(format!("{INCLUDE_MARK}\n{include}\n\n{existing}"))
}

/// `existing` without banger's `Include` and its mark; `None` when absent.
pub fn without_include(existing: &str, config: &Path) -> Option<String> {
    let include = format!("Include \"{}\"", config.display());
    if !existing.lines().any(|l| l.trim() == include) {
        return None;
    }
    let mut kept = Vec::new();
    let mut lines = existing.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == INCLUDE_MARK || line.trim() == include {
            // The blank line banger put after its own.
            if line.trim() == include && lines.peek().is_some_and(|l| l.trim().is_empty()) {
                lines.next();
            }
            continue;
        }
        kept.push(line);
    }
    let mut text = kept.join("\n");
    if existing.ends_with('\n') && !text.is_empty() {
        text.push('\n');
    }
    Some(text)
}

/// Writes `path` (0600) whole or not at all.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("banger-tmp");
    let mut file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(text.as_bytes())?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes banger's key pair and the VMs' host keys from the daemon.
async fn refresh(ctx: &Context, paths: &SshPaths) -> anyhow::Result<SshInfo> {
    let info = ctx.client.ssh_info().await?;
    make_private_dir(&paths.dir)?;
    if std::fs::read_to_string(&paths.key).ok().as_deref() != Some(info.private_key.as_str()) {
        write_private(&paths.key, &info.private_key)?;
        write_private(&paths.key.with_extension("pub"), &format!("{}\n", info.public_key))?;
    }
    let known: String = info.known_hosts.iter().map(|h| format!("{}\n", h.line)).collect();
    write_private(&paths.known_hosts, &known)?;
    Ok(info)
}

/// Writes banger's ssh config (and files), keeping a configured identity.
async fn write_config(ctx: &Context, paths: &SshPaths, identity: Option<&Path>) -> anyhow::Result<()> {
    refresh(ctx, paths).await?;
    let banger = std::env::current_exe().context("cannot tell where the banger binary is")?;
    let socket = std::path::absolute(ctx.client.socket()).unwrap_or_else(|_| ctx.client.socket().to_owned());
    write_private(&paths.config, &config_text(&banger, &socket, paths, identity))
}

/// `ssh-config install [--identity KEY]`.
pub async fn install(ctx: &Context, identity: Option<PathBuf>) -> anyhow::Result<()> {
    let paths = SshPaths::for_user()?;
    if let Some(key) = &identity {
        let public = key.with_extension("pub");
        let line = std::fs::read_to_string(&public)
            .with_context(|| format!("cannot read {} (the public half of {})", public.display(), key.display()))?;
        ctx.client.register_ssh_key(line.trim()).await?;
    }
    write_config(ctx, &paths, identity.as_deref()).await?;
    let ssh_dir = home()?.join(".ssh");
    make_private_dir(&ssh_dir)?;
    let user_config = ssh_dir.join("config");
    let existing = match std::fs::read_to_string(&user_config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", user_config.display())),
    };
    match with_include(&existing, &paths.config) {
        Some(text) => {
            write_private(&user_config, &text)?;
            println!("{} now includes {}", user_config.display(), paths.config.display());
        }
        None => println!("{} already includes {}", user_config.display(), paths.config.display()),
    }
    if identity.is_some() {
        println!("your key is let into each VM from its next boot (restart running ones)");
    }
    println!("`ssh NAME.vm` reaches VM NAME through banger");
    Ok(())
}

/// `ssh-config uninstall`: removes banger's `Include` line.
pub fn uninstall() -> anyhow::Result<()> {
    let paths = SshPaths::for_user()?;
    let user_config = home()?.join(".ssh/config");
    let existing = std::fs::read_to_string(&user_config).unwrap_or_default();
    match without_include(&existing, &paths.config) {
        Some(text) => {
            write_private(&user_config, &text)?;
            println!("{} no longer includes {}", user_config.display(), paths.config.display());
        }
        None => println!("{} does not include banger's config", user_config.display()),
    }
    Ok(())
}

/// `ssh-config show`: writes the config and prints it.
pub async fn show(ctx: &Context) -> anyhow::Result<()> {
    let paths = SshPaths::for_user()?;
    if !paths.config.exists() {
        write_config(ctx, &paths, None).await?;
    }
    print!("{}", std::fs::read_to_string(&paths.config)?);
    Ok(())
}

/// `ssh-config proxy HOST PORT`, ssh's ProxyCommand: brings the host
/// keys up to date (ssh reads them after this starts), then carries the
/// connection.
pub async fn proxy(ctx: &Context, host: &str, port: u16) -> anyhow::Result<ExitCode> {
    refresh(ctx, &SshPaths::for_user()?).await?;
    super::ports::connect(ctx, host, port).await
}

/// `vm ssh NAME [-- CMD...]`: ssh into the VM with banger's config.
pub async fn vm_ssh(ctx: &Context, name: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let name = super::ports::vm_name(name);
    let listening = ctx.client.vm_ports(name).await?;
    if !listening.iter().any(|p| p.protocol == "tcp" && p.port == 22) {
        anyhow::bail!(
            "VM {name} runs no SSH server (nothing listens on port 22; the tiny image has none): \
             use `banger vm exec {name} -- CMD`, or an image with sshd such as debian"
        );
    }
    let paths = SshPaths::for_user()?;
    if paths.config.exists() {
        refresh(ctx, &paths).await?;
    } else {
        write_config(ctx, &paths, None).await?;
    }
    use std::os::unix::process::CommandExt;
    let error =
        std::process::Command::new("ssh").arg("-F").arg(&paths.config).arg(format!("{name}.vm")).args(command).exec();
    Err(anyhow::Error::new(error).context("cannot run ssh (install OpenSSH's client)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_sends_every_vm_through_banger_with_pinned_keys() {
        let paths = SshPaths::under(Path::new("/home/u/.config/banger/ssh"));
        let text = config_text(Path::new("/usr/bin/banger"), Path::new("/run/banger/bangerd.sock"), &paths, None);
        assert!(text.contains("Host *.vm\n"));
        assert!(text.contains(
            "    ProxyCommand \"/usr/bin/banger\" --socket \"/run/banger/bangerd.sock\" ssh-config proxy %h %p\n"
        ));
        assert!(text.contains("    IdentityFile \"/home/u/.config/banger/ssh/id_ed25519\"\n"));
        assert!(text.contains("    UserKnownHostsFile \"/home/u/.config/banger/ssh/known_hosts\"\n"));
        assert!(text.contains("    StrictHostKeyChecking yes\n"));
        let own = config_text(Path::new("/b"), Path::new("/s"), &paths, Some(Path::new("/home/u/.ssh/id_ed25519")));
        assert!(own.contains("    IdentityFile \"/home/u/.ssh/id_ed25519\"\n"));
    }

    #[test]
    fn the_include_goes_first_once_and_comes_out_leaving_the_users_lines() {
        let config = Path::new("/home/u/.config/banger/ssh/config");
        let users = "Host work\n    User me\n";
        let with = with_include(users, config).unwrap();
        assert!(with.starts_with(INCLUDE_MARK));
        assert!(with.ends_with(users), "the user's lines are kept as they were");
        assert_eq!(with_include(&with, config), None, "a second install changes nothing");
        assert_eq!(without_include(&with, config).as_deref(), Some(users));
        assert_eq!(without_include(users, config), None);
        assert_eq!(without_include(&with_include("", config).unwrap(), config).as_deref(), Some(""));
    }
}
