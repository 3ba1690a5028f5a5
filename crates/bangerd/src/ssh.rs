//! SSH with no prompt: banger's own key pair (under `<state>/ssh`; its
//! private half goes to the API's callers, who can already run anything
//! in every guest), the public keys users register, and one host key per
//! VM, made with the VM, written into its guest at every boot and listed in
//! the known_hosts banger manages, so a first connection is verified with
//! no trust on first use.

use std::path::{Path, PathBuf};

use banger_api::{SshInfo, SshKnownHost};
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use crate::error::{Error, Result};
use crate::Daemon;

/// The host key's file in a VM's directory (its public half beside it, `.pub`).
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Where the guest gets its files: the host key, the keys allowed in, and
/// the sshd drop-in that points at both.
pub mod guest {
    /// The host key.
    pub const HOST_KEY: &str = "/etc/ssh/banger_host_ed25519_key";
    /// Its public half.
    pub const HOST_KEY_PUB: &str = "/etc/ssh/banger_host_ed25519_key.pub";
    /// The keys allowed in, for every account, beside each account's own.
    pub const AUTHORIZED_KEYS: &str = "/etc/ssh/banger_authorized_keys";
    /// The drop-in; a guest whose sshd has no `sshd_config.d` gets nothing.
    pub const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/banger.conf";
    /// The directory the drop-in needs.
    pub const SSHD_DROP_IN_DIR: &str = "/etc/ssh/sshd_config.d";
}

/// The sshd drop-in: banger's host key, and its keys for every account.
pub fn sshd_drop_in() -> String {
    format!(
        "# Written by banger at every boot.\nHostKey {}\nAuthorizedKeysFile .ssh/authorized_keys {}\n",
        guest::HOST_KEY,
        guest::AUTHORIZED_KEYS
    )
}

/// The state's SSH directory: banger's key pair and the registered keys.
pub struct SshKeys {
    dir: PathBuf,
}

impl SshKeys {
    /// The keys under `<state_dir>/ssh`.
    pub fn new(state_dir: &Path) -> SshKeys {
        SshKeys { dir: state_dir.join("ssh") }
    }

    fn client_key_path(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    fn registered_path(&self) -> PathBuf {
        self.dir.join("authorized_keys")
    }

    /// banger's key pair, made at first need.
    pub fn client_key(&self) -> Result<PrivateKey> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("cannot create", &self.dir))?;
        load_or_make(&self.client_key_path(), "banger")
    }

    /// The public keys a guest lets in: banger's, then the registered ones.
    pub fn authorized_keys(&self) -> Result<String> {
        let mut keys = self.client_key()?.public_key().to_openssh().map_err(key_error)?;
        keys.push('\n');
        match std::fs::read_to_string(self.registered_path()) {
            Ok(registered) => keys.push_str(&registered),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot read", self.registered_path())(e)),
        }
        Ok(keys)
    }

    /// Adds a user's public key (one OpenSSH line) to those guests let in
    /// from their next boot; false when it was there already.
    pub fn register(&self, line: &str) -> Result<bool> {
        let key = PublicKey::from_openssh(line.trim())
            .map_err(|e| Error::InvalidArgument(format!("not an OpenSSH public key line: {e}")))?;
        let line = key.to_openssh().map_err(key_error)?;
        let existing = self.authorized_keys()?;
        let known = existing.lines().any(|l| PublicKey::from_openssh(l).is_ok_and(|k| k.key_data() == key.key_data()));
        if known {
            return Ok(false);
        }
        let mut registered = existing.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>();
        registered.push_str(&line);
        registered.push('\n');
        write_atomically(&self.registered_path(), registered.as_bytes())?;
        Ok(true)
    }
}

/// VM `vm`'s host key in its directory `vm_dir`, made at first need.
pub fn host_key(vm_dir: &Path, vm: &str) -> Result<PrivateKey> {
    load_or_make(&vm_dir.join(HOST_KEY_FILE), &format!("{vm}.vm"))
}

/// The known_hosts line for VM `vm` with host key `key`.
pub fn known_hosts_line(vm: &str, key: &PublicKey) -> Result<String> {
    let mut key = key.clone();
    key.set_comment("");
    Ok(format!("{vm}.vm {}", key.to_openssh().map_err(key_error)?))
}

/// What a client needs to ssh into every VM with no prompt.
pub fn info(daemon: &Daemon) -> Result<SshInfo> {
    let client = daemon.ssh.client_key()?;
    let mut known_hosts = Vec::new();
    for record in daemon.vm_records()? {
        let path = daemon.vm_dir(&record.name).join(HOST_KEY_FILE);
        // A VM made before banger kept host keys gets one at its next boot.
        let Ok(key) = load(&path) else { continue };
        known_hosts
            .push(SshKnownHost { vm: record.name.clone(), line: known_hosts_line(&record.name, key.public_key())? });
    }
    write_known_hosts(daemon, &known_hosts)?;
    Ok(SshInfo {
        private_key: client.to_openssh(LineEnding::LF).map_err(key_error)?.to_string(),
        public_key: client.public_key().to_openssh().map_err(key_error)?,
        known_hosts,
    })
}

/// `<state>/ssh/known_hosts`: the file root's own ssh can use as it is.
fn write_known_hosts(daemon: &Daemon, hosts: &[SshKnownHost]) -> Result<()> {
    let text: String = hosts.iter().map(|h| format!("{}\n", h.line)).collect();
    write_atomically(&daemon.config.state_dir.join("ssh/known_hosts"), text.as_bytes())
}

fn load(path: &Path) -> std::io::Result<PrivateKey> {
    let text = std::fs::read_to_string(path)?;
    PrivateKey::from_openssh(text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// The ed25519 key at `path` (and `path.pub`), made if there is none.
fn load_or_make(path: &Path, comment: &str) -> Result<PrivateKey> {
    match load(path) {
        Ok(key) => return Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot read the SSH key", path)(e)),
    }
    let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519).map_err(key_error)?;
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF).map_err(key_error)?;
    let public = key.public_key().to_openssh().map_err(key_error)?;
    write_atomically(&path.with_extension("pub"), format!("{public}\n").as_bytes())?;
    write_atomically(path, private.as_bytes())?;
    Ok(key)
}

/// Writes `path` whole or not at all (a temporary file renamed over it), 0600.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::options().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(Error::io("cannot write", path))
}

fn key_error(e: ssh_key::Error) -> Error {
    Error::Internal(format!("SSH key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let keys = SshKeys::new(dir.path());
        let first = keys.client_key().unwrap();
        assert_eq!(keys.client_key().unwrap().public_key(), first.public_key(), "the same pair the second time");
        let host = host_key(dir.path(), "dev").unwrap();
        assert_ne!(host.public_key(), first.public_key());
        let line = known_hosts_line("dev", host.public_key()).unwrap();
        assert!(line.starts_with("dev.vm ssh-ed25519 AAAA"), "{line}");
        assert!(!line.ends_with(' '), "{line:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ssh/id_ed25519")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn registered_keys_are_checked_and_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let keys = SshKeys::new(dir.path());
        let user = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let line = user.public_key().to_openssh().unwrap();
        assert!(keys.register(&format!("{line} me@host\n")).unwrap());
        assert!(!keys.register(&line).unwrap(), "the same key again");
        assert!(keys.register("ssh-ed25519 garbage").is_err());
        let allowed = keys.authorized_keys().unwrap();
        assert_eq!(allowed.lines().count(), 2, "{allowed}");
        assert!(allowed.lines().nth(1).unwrap().starts_with(&line));
    }
}
