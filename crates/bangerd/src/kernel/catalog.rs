//! Loading the kernel catalogs: the embedded one, then each configured
//! source (an http(s) URL, a file URL or a path), later ones overriding.

use banger_api::{CatalogEntry, KernelCatalog};
use banger_kernel::catalog;

use crate::error::{Error, Result};

/// Reads every catalog and merges them.
pub async fn load(http: &reqwest::Client, sources: &[String]) -> Result<Vec<CatalogEntry>> {
    let mut catalogs: Vec<KernelCatalog> = vec![catalog::parse("embedded", catalog::EMBEDDED)?];
    for source in sources {
        let text = read_source(http, source).await?;
        catalogs.push(catalog::parse(source, &text)?);
    }
    Ok(catalog::merge(catalogs))
}

async fn read_source(http: &reqwest::Client, source: &str) -> Result<String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let failed = |reason: String| Error::Download { url: source.to_owned(), reason };
        let response = http.get(source).send().await.map_err(|e| failed(error_chain(&e.without_url())))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        return response.text().await.map_err(|e| failed(error_chain(&e.without_url())));
    }
    let path = source.strip_prefix("file://").unwrap_or(source);
    tokio::fs::read_to_string(path).await.map_err(Error::io("cannot read catalog", path))
}

/// An error and its causes on one line (reqwest hides the useful part in sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
