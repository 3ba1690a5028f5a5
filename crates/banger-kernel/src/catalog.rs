//! Kernel catalogs: the one embedded in the binary and any the user adds.
//! Parsing, validation, merging and lookup are pure; fetching a catalog
//! from a URL is the daemon's job.

use std::collections::BTreeSet;

use banger_api::{CatalogEntry, CatalogEntryState, CatalogListing, KernelCatalog};

/// The catalog built into banger.
pub const EMBEDDED: &str = include_str!("../catalog.json");

/// The only catalog format version this code reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a catalog could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Not JSON, or not the catalog's shape.
    #[error("catalog {source_name} is not valid")]
    Parse {
        /// Where the catalog came from.
        source_name: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A version this code does not read.
    #[error("catalog {source_name} has format version {version}, expected {FORMAT_VERSION}")]
    Version {
        /// Where the catalog came from.
        source_name: String,
        /// The version it declares.
        version: u32,
    },
    /// An entry is malformed.
    #[error("catalog {source_name}: entry {name:?}: {reason}")]
    Entry {
        /// Where the catalog came from.
        source_name: String,
        /// The entry's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No entry has that name.
    #[error("no kernel named {name:?} in the catalog ({count} entries; see `banger kernel list --available`)")]
    NotFound {
        /// The name looked up.
        name: String,
        /// How many entries the catalog has.
        count: usize,
    },
}

/// Parses and validates one catalog document. `source_name` names it in errors.
pub fn parse(source_name: &str, text: &str) -> Result<KernelCatalog, CatalogError> {
    let catalog: KernelCatalog = serde_json::from_str(text)
        .map_err(|source| CatalogError::Parse { source_name: source_name.to_owned(), source })?;
    if catalog.version != FORMAT_VERSION {
        return Err(CatalogError::Version { source_name: source_name.to_owned(), version: catalog.version });
    }
    let mut seen = BTreeSet::new();
    for entry in &catalog.entries {
        let bad = |reason: &str| CatalogError::Entry {
            source_name: source_name.to_owned(),
            name: entry.name.clone(),
            reason: reason.to_owned(),
        };
        if let Err(reason) = validate_name(&entry.name) {
            return Err(bad(&reason));
        }
        if !is_sha256_hex(&entry.tarball_sha256) {
            return Err(bad("tarball_sha256 is not 64 lowercase hex digits"));
        }
        if entry.tarball_url.is_empty() {
            return Err(bad("tarball_url is empty"));
        }
        if !seen.insert(entry.name.as_str()) {
            return Err(bad("name appears twice"));
        }
    }
    Ok(catalog)
}

/// Merges catalogs in order: an entry in a later catalog replaces an entry
/// of the same name from an earlier one, so users can override the
/// embedded catalog.
pub fn merge(catalogs: impl IntoIterator<Item = KernelCatalog>) -> Vec<CatalogEntry> {
    let mut merged: Vec<CatalogEntry> = Vec::new();
    for catalog in catalogs {
        for entry in catalog.entries {
            match merged.iter_mut().find(|e| e.name == entry.name) {
                Some(existing) => *existing = entry,
                None => merged.push(entry),
            }
        }
    }
    merged
}

/// Finds an entry by name.
pub fn lookup<'a>(entries: &'a [CatalogEntry], name: &str) -> Result<&'a CatalogEntry, CatalogError> {
    entries
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| CatalogError::NotFound { name: name.to_owned(), count: entries.len() })
}

/// Annotates each entry with whether a kernel of its name is in the store.
pub fn annotate(entries: &[CatalogEntry], local: &BTreeSet<String>) -> Vec<CatalogListing> {
    entries
        .iter()
        .map(|entry| CatalogListing {
            state: if local.contains(&entry.name) { CatalogEntryState::Pulled } else { CatalogEntryState::Available },
            entry: entry.clone(),
        })
        .collect()
}

/// Checks that a kernel name is usable as a directory name and a DNS-ish
/// label: 1 to 63 of lowercase letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if name.is_empty() || name.len() > 63 {
        return Err(format!("name {name:?} must be 1 to 63 characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(format!("name {name:?} must start with a lowercase letter or digit"));
    }
    if !name.chars().all(ok_char) {
        return Err(format!("name {name:?} may hold only lowercase letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// Whether `s` is a SHA-256 digest in lowercase hex.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, url: &str) -> CatalogEntry {
        CatalogEntry {
            name: name.into(),
            distro: "debian".into(),
            arch: "x86_64".into(),
            kernel_version: "6.1.0".into(),
            tarball_url: url.into(),
            tarball_sha256: "a".repeat(64),
            size_bytes: 1,
            description: "test".into(),
        }
    }

    fn doc(entries: Vec<CatalogEntry>) -> String {
        serde_json::to_string(&KernelCatalog { version: 1, entries }).unwrap()
    }

    #[test]
    fn embedded_catalog_parses() {
        parse("embedded", EMBEDDED).unwrap();
    }

    #[test]
    fn parses_and_looks_up() {
        let cat = parse("t", &doc(vec![entry("a", "http://x/a"), entry("b", "http://x/b")])).unwrap();
        let entries = merge([cat]);
        assert_eq!(lookup(&entries, "b").unwrap().tarball_url, "http://x/b");
        let err = lookup(&entries, "zz").unwrap_err();
        assert!(err.to_string().contains("no kernel named \"zz\""), "{err}");
    }

    #[test]
    fn rejects_bad_documents() {
        assert!(matches!(parse("t", "{"), Err(CatalogError::Parse { .. })));
        assert!(matches!(parse("t", r#"{"version":2,"entries":[]}"#), Err(CatalogError::Version { version: 2, .. })));
        let unknown = r#"{"version":1,"entries":[],"extra":1}"#;
        assert!(matches!(parse("t", unknown), Err(CatalogError::Parse { .. })));
        let mut bad_sha = entry("a", "u");
        bad_sha.tarball_sha256 = "xyz".into();
        assert!(matches!(parse("t", &doc(vec![bad_sha])), Err(CatalogError::Entry { .. })));
        let dup = doc(vec![entry("a", "u"), entry("a", "v")]);
        assert!(parse("t", &dup).unwrap_err().to_string().contains("twice"));
        assert!(parse("t", &doc(vec![entry("../x", "u")])).is_err());
    }

    #[test]
    fn later_catalogs_override_earlier() {
        let a = KernelCatalog { version: 1, entries: vec![entry("k", "old"), entry("j", "j")] };
        let b = KernelCatalog { version: 1, entries: vec![entry("k", "new")] };
        let merged = merge([a, b]);
        assert_eq!(merged.len(), 2);
        assert_eq!(lookup(&merged, "k").unwrap().tarball_url, "new");
    }

    #[test]
    fn annotates_pulled_state() {
        let entries = vec![entry("a", "u"), entry("b", "v")];
        let local = BTreeSet::from(["b".to_owned(), "imported".to_owned()]);
        let listed = annotate(&entries, &local);
        assert_eq!(listed[0].state, CatalogEntryState::Available);
        assert_eq!(listed[1].state, CatalogEntryState::Pulled);
    }

    #[test]
    fn names() {
        assert!(validate_name("debian-6.1_cloud").is_ok());
        for bad in ["", "-a", "A", "a/b", "..", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
