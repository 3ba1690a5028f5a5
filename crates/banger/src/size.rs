//! Sizes on the command line: `512M`, `4G`, `1.5G`, `10240K`, or bytes.

/// Parses a size with an optional binary suffix (K, M, G, T; `iB`/`B` allowed).
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (number, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size (try 512M or 4G)"))?;
    if value <= 0.0 || !value.is_finite() {
        return Err(format!("{text:?} must be positive"));
    }
    Ok((value * (1u64 << shift) as f64) as u64)
}

/// Parses a memory size; a bare number means MiB.
pub fn parse_mib(text: &str) -> Result<u32, String> {
    if let Ok(mib) = text.trim().parse::<u32>() {
        return Ok(mib);
    }
    Ok((parse(text)? >> 20) as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse("4G"), Ok(4 << 30));
        assert_eq!(super::parse("512MiB"), Ok(512 << 20));
        assert_eq!(super::parse("1.5G"), Ok(3 << 29));
        assert_eq!(super::parse("1000"), Ok(1000));
        assert!(super::parse("lots").is_err());
        assert!(super::parse("-1G").is_err());
        assert_eq!(super::parse_mib("1G"), Ok(1024));
        assert_eq!(super::parse_mib("256"), Ok(256));
    }
}
