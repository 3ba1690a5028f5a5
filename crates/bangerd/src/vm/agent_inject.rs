//! The agent a VM runs comes from the daemon that boots it: before each
//! boot's VMM starts, the daemon's own static agent is written into the
//! VM's root disk (never the shared image) where its image carries the
//! agent. Host and guest thus always speak the same protocol, and an image
//! built by an older banger needs no rebuild. A guest with an sshd that
//! reads `sshd_config.d` gets banger's SSH files the same way: its host
//! key, the keys it lets in, and the drop-in naming both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use banger_api::{Image, ImageRecipe, ImageSource};
use banger_image::{guest_directory_exists, install_agent, install_files, locate_agent, GuestFile, Recipe};

use super::{ledger, VmRecord};
use crate::error::{Error, Result};
use crate::Daemon;

/// Where an image carries its agent, when its source says: banger's own
/// recipes put it in one known place each. A registered image's is found
/// on the VM's disk at its first boot.
pub fn image_agent_path(image: &Image) -> Option<String> {
    let recipe = match &image.source {
        ImageSource::Recipe(ImageRecipe::Tiny) => Recipe::Tiny,
        ImageSource::Recipe(ImageRecipe::Debian) => Recipe::debian(),
        ImageSource::Dir(dir) => Recipe::FromDir(dir.into()),
        ImageSource::Tar(tar) => Recipe::FromTar(tar.into()),
        // A source a newer daemon wrote is looked for like a registered one.
        ImageSource::Register(_) | ImageSource::Other(_) => return None,
    };
    Some(recipe.agent_path().to_owned())
}

/// Writes the daemon's agent into `disk`, the root disk the VM is about
/// to boot, at `record.agent_path`, which is found on the disk and kept in
/// the record when it is not known yet (a registered image, or a record
/// older than the field). The caller saves the record.
pub async fn install(daemon: &Arc<Daemon>, record: &mut VmRecord, disk: PathBuf) -> Result<()> {
    let agent = crate::image::agent_binary(daemon)?;
    let (known, init, name) = (record.agent_path.clone(), record.init.clone(), record.name.clone());
    let ssh_files = ssh_files(daemon, &record.name)?;
    let started = Instant::now();
    let path = ledger::blocking(move || {
        let wrap = |source| Error::AgentInstall { name: name.clone(), source };
        let path = match known {
            Some(path) => path,
            None => locate_agent(&disk, &init).map_err(wrap)?,
        };
        install_agent(&disk, &agent, &path).map_err(wrap)?;
        if guest_directory_exists(&disk, crate::ssh::guest::SSHD_DROP_IN_DIR).map_err(wrap)? {
            install_files(&disk, &ssh_files).map_err(wrap)?;
        }
        Ok(path)
    })
    .await?;
    tracing::debug!(vm = %record.name, path = %path, ms = started.elapsed().as_millis(), "guest agent installed");
    record.agent_path = Some(path);
    Ok(())
}

/// The SSH files for VM `vm`'s guest, staged in its directory: its host
/// key (made at first need), the keys it lets in, and the sshd drop-in.
fn ssh_files(daemon: &Daemon, vm: &str) -> Result<Vec<GuestFile>> {
    use crate::ssh::{self, guest};
    let dir = daemon.vm_dir(vm);
    ssh::host_key(&dir, vm)?;
    let staged = dir.join("guest-ssh");
    std::fs::create_dir_all(&staged).map_err(Error::io("cannot create", &staged))?;
    let stage = |name: &str, text: String| -> Result<std::path::PathBuf> {
        let path = staged.join(name);
        std::fs::write(&path, text).map_err(Error::io("cannot write", &path))?;
        Ok(path)
    };
    let host_key = dir.join(ssh::HOST_KEY_FILE);
    Ok(vec![
        GuestFile { host: host_key.clone(), guest: guest::HOST_KEY.into(), mode: 0o600 },
        GuestFile { host: host_key.with_extension("pub"), guest: guest::HOST_KEY_PUB.into(), mode: 0o644 },
        GuestFile {
            host: stage("authorized_keys", daemon.ssh.authorized_keys()?)?,
            guest: guest::AUTHORIZED_KEYS.into(),
            mode: 0o644,
        },
        GuestFile { host: stage("banger.conf", ssh::sshd_drop_in())?, guest: guest::SSHD_DROP_IN.into(), mode: 0o644 },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(source: ImageSource) -> Image {
        Image {
            name: "i".into(),
            kernel: "k".into(),
            source,
            init: "/sbin/init".into(),
            size_bytes: 1 << 26,
            rootfs_path: "/state/images/i/rootfs.ext4".into(),
            created_at: banger_api::Timestamp::now(),
        }
    }

    #[test]
    fn built_images_say_where_their_agent_is_and_registered_ones_do_not() {
        let at = |source| image_agent_path(&image(source));
        assert_eq!(at(ImageSource::Recipe(ImageRecipe::Tiny)).as_deref(), Some("/usr/bin/banger-agent"));
        assert_eq!(at(ImageSource::Recipe(ImageRecipe::Debian)).as_deref(), Some(banger_image::AGENT_PATH));
        assert_eq!(at(ImageSource::Dir("/srv/root".into())).as_deref(), Some(banger_image::AGENT_PATH));
        assert_eq!(at(ImageSource::Tar("/srv/root.tar".into())).as_deref(), Some(banger_image::AGENT_PATH));
        assert_eq!(at(ImageSource::Register("/srv/root.ext4".into())), None);
        assert_eq!(at(ImageSource::Other("oci:debian".into())), None);
    }
}
