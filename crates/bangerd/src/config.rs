//! Daemon configuration: defaults, `/etc/banger/config.toml`, environment
//! and flags, in rising precedence. The same file serves the CLI, which
//! reads only the socket path from it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default limit on a kernel bundle's decompressed size.
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 4 << 30;

/// Everything the daemon needs to run. Tests build one directly.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the API socket.
    pub socket: PathBuf,
    /// State root: database, kernels, images, VMs.
    pub state_dir: PathBuf,
    /// Extra kernel catalogs (URLs or paths), after the embedded one.
    pub catalogs: Vec<String>,
    /// Largest decompressed kernel bundle a pull accepts.
    pub max_bundle_bytes: u64,
    /// Static busybox put into the initramfs of imported kernels and tiny images.
    pub busybox: PathBuf,
    /// Runtime files: VM sockets, pid files, consoles.
    pub run_dir: PathBuf,
    /// The static guest agent put into images, as configured (`[vms]
    /// agent_binary`): used if it is a static ELF, an error otherwise.
    pub agent_binary: Option<PathBuf>,
    /// Where to look for a static agent when none is configured, in order
    /// (default: `banger-agent` beside the daemon's executable, then
    /// /usr/local/lib/banger/banger-agent); the first static ELF wins.
    pub agent_candidates: Vec<PathBuf>,
    /// Force a VMM instead of choosing from the host's capabilities.
    pub vmm: Option<banger_api::VmmChoice>,
    /// Run Firecracker under this jailer binary.
    pub jailer: Option<PathBuf>,
    /// The uid and gid the jailer runs Firecracker as.
    pub jail_identity: banger_vmm::firecracker::JailIdentity,
    /// How long a boot may take until the agent answers.
    pub boot_timeout: std::time::Duration,
    /// Limits on API connections (`[api]`).
    pub api: crate::server::Limits,
    /// For tests: run every VM with the test driver, which runs the guest
    /// agent as a host process (no guest). Not settable from the file.
    pub test_driver: Option<banger_vmm::local::Local>,
    /// For tests: make `vm create` fail right after this step.
    pub fail_create_after: Option<crate::vm::create::CreateStep>,
    /// VM networking (`[network]`).
    pub network: crate::net::Settings,
}

impl Config {
    /// The static guest agent images carry: the configured one if it is
    /// static, else the first static candidate. `None` when there is none;
    /// [`crate::image::agent_binary::find`] says why.
    pub fn agent_binary(&self) -> Option<PathBuf> {
        crate::image::agent_binary::find(self).ok()
    }

    /// A configuration with every default, rooted at `state_dir` and `socket`.
    pub fn new(state_dir: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Config {
        Config {
            socket: socket.into(),
            state_dir: state_dir.into(),
            catalogs: Vec::new(),
            max_bundle_bytes: DEFAULT_MAX_BUNDLE_BYTES,
            busybox: PathBuf::from("/bin/busybox"),
            run_dir: PathBuf::from("/run/banger"),
            agent_binary: None,
            agent_candidates: crate::image::agent_binary::default_candidates(),
            vmm: None,
            jailer: None,
            jail_identity: banger_vmm::firecracker::DEFAULT_JAIL_IDENTITY,
            boot_timeout: std::time::Duration::from_secs(180),
            api: crate::server::Limits::default(),
            test_driver: None,
            fail_create_after: None,
            network: crate::net::Settings::default(),
        }
    }

    /// Applies a parsed config file over this configuration; a value out
    /// of its range is an error naming it.
    pub fn apply_file(&mut self, file: ConfigFile) -> Result<(), ConfigError> {
        if let Some(network) = file.network {
            self.network.apply(network).map_err(ConfigError::Invalid)?;
        }
        if let Some(socket) = file.socket {
            self.socket = socket;
        }
        if let Some(state_dir) = file.state_dir {
            self.state_dir = state_dir;
        }
        if let Some(run_dir) = file.run_dir {
            self.run_dir = run_dir;
        }
        if let Some(vms) = file.vms {
            if let Some(agent) = vms.agent_binary {
                self.agent_binary = Some(agent);
            }
            if let Some(vmm) = vms.vmm {
                self.vmm = Some(vmm);
            }
            if let Some(jailer) = vms.jailer {
                self.jailer = Some(jailer);
            }
            if let Some(uid) = vms.jailer_uid {
                self.jail_identity.uid = uid;
            }
            if let Some(gid) = vms.jailer_gid {
                self.jail_identity.gid = gid;
            }
            if let Some(secs) = vms.boot_timeout_secs {
                self.boot_timeout = std::time::Duration::from_secs(secs);
            }
        }
        if let Some(api) = file.api {
            if let Some(max) = api.max_connections {
                self.api.max_connections = max;
            }
            let secs = std::time::Duration::from_secs;
            if let Some(timeout) = api.header_timeout_secs {
                self.api.header_timeout = secs(timeout);
            }
            if let Some(timeout) = api.body_timeout_secs {
                self.api.body_timeout = secs(timeout);
            }
            if let Some(timeout) = api.idle_timeout_secs {
                self.api.idle_timeout = secs(timeout);
            }
        }
        if let Some(kernels) = file.kernels {
            self.catalogs.extend(kernels.catalogs);
            if let Some(max) = kernels.max_bundle_bytes {
                self.max_bundle_bytes = max;
            }
            if let Some(busybox) = kernels.busybox {
                self.busybox = busybox;
            }
        }
        Ok(())
    }
}

/// `/etc/banger/config.toml`. Unknown keys are refused, so a typo is an
/// error rather than a silently ignored setting.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Path of the API socket.
    pub socket: Option<PathBuf>,
    /// State root.
    pub state_dir: Option<PathBuf>,
    /// Runtime directory.
    pub run_dir: Option<PathBuf>,
    /// `[kernels]` settings.
    pub kernels: Option<KernelsSection>,
    /// `[vms]` settings.
    pub vms: Option<VmsSection>,
    /// `[api]` settings.
    pub api: Option<ApiSection>,
    /// `[network]` settings.
    pub network: Option<crate::net::settings::NetworkSection>,
}

/// The `[api]` table: limits on API connections. Zero is refused: a cap
/// or timeout of zero would shut every client out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Open connections at most (default: half the open-files limit, at most 4096).
    #[serde(default, deserialize_with = "positive")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a whole request header.
    #[serde(default, deserialize_with = "positive")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a request body may go without sending a byte.
    #[serde(default, deserialize_with = "positive")]
    pub body_timeout_secs: Option<u64>,
    /// Seconds a connection may sit between requests.
    #[serde(default, deserialize_with = "positive")]
    pub idle_timeout_secs: Option<u64>,
}

/// A number that must not be zero.
fn positive<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialEq,
{
    let value = T::deserialize(deserializer)?;
    if value == T::default() {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(Some(value))
}

/// The `[vms]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmsSection {
    /// The static guest agent binary put into images.
    pub agent_binary: Option<PathBuf>,
    /// Force a VMM: "firecracker" or "qemu".
    #[serde(default, deserialize_with = "banger_api::VmmChoice::deserialize_requested")]
    pub vmm: Option<banger_api::VmmChoice>,
    /// Run Firecracker under this jailer binary (a path).
    pub jailer: Option<PathBuf>,
    /// The uid the jailer runs Firecracker as (no account needs to exist).
    pub jailer_uid: Option<u32>,
    /// The gid the jailer runs Firecracker as.
    pub jailer_gid: Option<u32>,
    /// Seconds a boot may take until the agent answers.
    pub boot_timeout_secs: Option<u64>,
}

/// The `[kernels]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelsSection {
    /// Extra catalogs, URLs or paths.
    #[serde(default)]
    pub catalogs: Vec<String>,
    /// Largest decompressed bundle a pull accepts.
    pub max_bundle_bytes: Option<u64>,
    /// Static busybox for imported kernels' initramfs.
    pub busybox: Option<PathBuf>,
}

/// Why the config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A value is out of its range.
    #[error("{0}")]
    Invalid(String),
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
}

/// Reads a config file; a missing file is an empty one.
pub fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
    };
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults() {
        let file: ConfigFile = toml::from_str(
            "state_dir = \"/srv/banger\"\n[kernels]\ncatalogs = [\"http://x/c.json\"]\nmax_bundle_bytes = 10\n",
        )
        .unwrap();
        let mut config = Config::new("/var/lib/banger", "/run/banger/bangerd.sock");
        config.apply_file(file).unwrap();
        assert_eq!(config.state_dir, Path::new("/srv/banger"));
        assert_eq!(config.catalogs, ["http://x/c.json"]);
        assert_eq!(config.max_bundle_bytes, 10);
    }

    #[test]
    fn the_jailer_runs_firecracker_unprivileged_unless_configured() {
        let mut config = Config::new("/var/lib/banger", "/run/banger/bangerd.sock");
        assert_eq!(config.jail_identity, banger_vmm::firecracker::DEFAULT_JAIL_IDENTITY);
        assert_ne!(config.jail_identity.uid, 0);
        assert_ne!(config.jail_identity.gid, 0);
        let file: ConfigFile =
            toml::from_str("[vms]\njailer = \"/usr/bin/jailer\"\njailer_uid = 990\njailer_gid = 991\n").unwrap();
        config.apply_file(file).unwrap();
        assert_eq!(config.jailer.as_deref(), Some(Path::new("/usr/bin/jailer")));
        assert_eq!((config.jail_identity.uid, config.jail_identity.gid), (990, 991));
    }

    /// The example config parses, with every commented key uncommented.
    #[test]
    fn the_example_config_lists_valid_keys() {
        let example = include_str!("../../../dist/config.toml");
        let uncommented: String = example
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|rest| rest.contains(" = ")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let file: ConfigFile = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert!(file.vms.unwrap().jailer_uid.is_some());
    }

    #[test]
    fn api_limits_come_from_the_file_and_zero_is_refused() {
        let file: ConfigFile = toml::from_str(
            "[api]\nmax_connections = 100\nheader_timeout_secs = 2\nbody_timeout_secs = 3\nidle_timeout_secs = 4\n",
        )
        .unwrap();
        let mut config = Config::new("/var/lib/banger", "/run/banger/bangerd.sock");
        config.apply_file(file).unwrap();
        let secs = std::time::Duration::from_secs;
        assert_eq!(
            config.api,
            crate::server::Limits {
                max_connections: 100,
                header_timeout: secs(2),
                body_timeout: secs(3),
                idle_timeout: secs(4)
            }
        );
        let error = toml::from_str::<ConfigFile>("[api]\nheader_timeout_secs = 0\n").unwrap_err();
        assert!(error.to_string().contains("must be at least 1"), "{error}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ConfigFile>("stat_dir = \"/x\"").is_err());
    }

    #[test]
    fn unknown_vmm_is_refused() {
        // Responses decode a VMM they do not know as `Unknown`; the config must not.
        let error = toml::from_str::<ConfigFile>("[vms]\nvmm = \"bochs\"\n").unwrap_err();
        assert!(error.to_string().contains("unknown vmm"), "{error}");
        let file: ConfigFile = toml::from_str("[vms]\nvmm = \"qemu\"\n").unwrap();
        assert_eq!(file.vms.and_then(|v| v.vmm), Some(banger_api::VmmChoice::Qemu));
    }

    #[test]
    fn missing_file_is_empty() {
        let file = read_file(Path::new("/nonexistent/banger.toml")).unwrap();
        assert!(file.socket.is_none());
    }
}
