//! The ranges a request's numbers must lie in, checked before any work
//! starts: vCPUs and memory up to what the host has, disk sizes up to a
//! fixed ceiling. Disk sizes are rounded up to whole MiB, and the rounded
//! size is what the record keeps and the file has.

use crate::error::{Error, Result};

/// The least memory a VM gets, MiB.
pub use banger_api::MIN_MEMORY_MIB;

/// The largest disk (root, work or image) the daemon makes: the last whole
/// MiB under 16 TiB, as large a file as an ext4 state root holds (its limit
/// is 16 TiB less 4 KiB), and within what ext4 inside the disk addresses.
pub use banger_api::MAX_DISK_BYTES;

/// Disk sizes are rounded up to a multiple of this.
pub const DISK_ROUNDING: u64 = 1 << 20;

/// What the host offers a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// CPUs this process may run on.
    pub cpus: u32,
    /// The host's memory (`MemTotal`), MiB.
    pub memory_mib: u64,
}

impl HostLimits {
    /// Reads them from the host: `available_parallelism` and `/proc/meminfo`.
    /// Where one cannot be read, it does not limit.
    pub fn probe() -> HostLimits {
        let cpus =
            std::thread::available_parallelism().map_or(u32::MAX, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        let memory_mib =
            std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| mem_total_mib(&text)).unwrap_or(u64::MAX);
        HostLimits { cpus, memory_mib }
    }

    /// Checks a vCPU count: 1 to the host's CPUs.
    pub fn check_cpus(&self, cpus: u32) -> Result<u32> {
        if cpus == 0 || cpus > self.cpus {
            return Err(Error::InvalidArgument(format!(
                "cpus must be between 1 and {} (the host's CPUs), not {cpus}",
                self.cpus
            )));
        }
        Ok(cpus)
    }

    /// Checks a memory size: the minimum to the host's memory.
    pub fn check_memory(&self, memory_mib: u32) -> Result<u32> {
        if memory_mib < MIN_MEMORY_MIB || u64::from(memory_mib) > self.memory_mib {
            return Err(Error::InvalidArgument(format!(
                "memory must be between {MIN_MEMORY_MIB} MiB and {} MiB (the host's memory), not {memory_mib} MiB",
                self.memory_mib
            )));
        }
        Ok(memory_mib)
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in MiB.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib / 1024)
}

/// A disk size as the daemon makes it: `bytes` rounded up to whole MiB,
/// refused when it is under `min` or the rounded size is over
/// [`MAX_DISK_BYTES`]. `what` names the field in the message.
pub fn disk_size(what: &str, bytes: u64, min: u64) -> Result<u64> {
    let rounded = bytes.checked_next_multiple_of(DISK_ROUNDING).filter(|&r| r <= MAX_DISK_BYTES).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{what} must be at most {MAX_DISK_BYTES} bytes (16 TiB less 1 MiB), not {bytes}"
        ))
    })?;
    if bytes < min {
        return Err(Error::InvalidArgument(format!("{what} must be at least {min} bytes, not {bytes}")));
    }
    Ok(rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostLimits = HostLimits { cpus: 4, memory_mib: 8000 };

    fn refused<T: std::fmt::Debug>(result: Result<T>) -> String {
        match result {
            Err(Error::InvalidArgument(message)) => message,
            other => panic!("expected invalid_argument, got {other:?}"),
        }
    }

    #[test]
    fn cpus_range_from_one_to_the_hosts() {
        assert_eq!(HOST.check_cpus(1).unwrap(), 1);
        assert_eq!(HOST.check_cpus(4).unwrap(), 4);
        assert_eq!(refused(HOST.check_cpus(0)), "cpus must be between 1 and 4 (the host's CPUs), not 0");
        refused(HOST.check_cpus(5));
        refused(HOST.check_cpus(u32::MAX));
    }

    #[test]
    fn memory_ranges_from_the_minimum_to_the_hosts() {
        assert_eq!(HOST.check_memory(64).unwrap(), 64);
        assert_eq!(HOST.check_memory(8000).unwrap(), 8000);
        refused(HOST.check_memory(63));
        let message = refused(HOST.check_memory(8001));
        assert_eq!(message, "memory must be between 64 MiB and 8000 MiB (the host's memory), not 8001 MiB");
        refused(HOST.check_memory(u32::MAX));
    }

    #[test]
    fn disk_sizes_round_up_to_mib_and_stop_at_16_tib() {
        assert_eq!(disk_size("size", 1 << 20, 1 << 20).unwrap(), 1 << 20);
        assert_eq!(disk_size("size", 104_857_601, 0).unwrap(), 101 << 20);
        assert_eq!(disk_size("size", 104_857_600, 0).unwrap(), 100 << 20);
        assert_eq!(disk_size("size", 1, 0).unwrap(), 1 << 20);
        assert_eq!(disk_size("size", MAX_DISK_BYTES, 0).unwrap(), MAX_DISK_BYTES);
        refused(disk_size("size", MAX_DISK_BYTES + 1, 0));
        refused(disk_size("size", 16 << 40, 0));
        refused(disk_size("size", 17 << 40, 0));
        refused(disk_size("size", 1 << 63, 0));
        let message = refused(disk_size("work_disk_bytes", u64::MAX, 0));
        assert!(message.starts_with("work_disk_bytes must be at most 17592184995840 bytes"), "{message}");
        refused(disk_size("size", (1 << 20) - 1, 1 << 20));
    }

    #[test]
    fn the_ceiling_is_whole_mib_and_the_document_says_it() {
        assert_eq!(MAX_DISK_BYTES % DISK_ROUNDING, 0);
        let doc = serde_json::to_value(crate::api::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for (schema, field) in [
            ("VmCreateRequest", "disk_size_bytes"),
            ("VmCreateRequest", "work_disk_bytes"),
            ("DiskResizeRequest", "size_bytes"),
            ("ImageBuildRequest", "size_bytes"),
        ] {
            let maximum = schemas[schema]["properties"][field]["maximum"].as_f64();
            assert_eq!(maximum, Some(MAX_DISK_BYTES as f64), "{schema}.{field}");
        }
        let minimum = schemas["VmCreateRequest"]["properties"]["memory_mib"]["minimum"].as_f64();
        assert_eq!(minimum, Some(f64::from(MIN_MEMORY_MIB)));
    }

    #[test]
    fn mem_total_is_read_from_meminfo() {
        assert_eq!(mem_total_mib("MemTotal:       16316412 kB\nMemFree: 1 kB\n"), Some(15933));
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
        assert!(HostLimits::probe().memory_mib > 0 && HostLimits::probe().cpus > 0);
    }
}
