//! Figures of a pull benchmark: per-round timings, medians and the ratio,
//! as a table or as JSON.

use serde::Serialize;

/// One timed run of one side.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Compressed (downloaded) MB per second, MB = 10^6 bytes.
    pub compressed_mb_s: f64,
    /// Decompressed (written) MB per second.
    pub unpacked_mb_s: f64,
}

impl Timing {
    pub fn new(seconds: f64, compressed_bytes: u64, unpacked_bytes: u64) -> Timing {
        let rate = |bytes: u64| bytes as f64 / 1e6 / seconds;
        Timing { seconds, compressed_mb_s: rate(compressed_bytes), unpacked_mb_s: rate(unpacked_bytes) }
    }
}

/// Both sides of one round.
#[derive(Debug, Serialize)]
pub struct Round {
    pub round: usize,
    pub banger: Timing,
    pub pipeline: Timing,
}

/// The whole benchmark.
#[derive(Debug, Serialize)]
pub struct PullReport {
    pub compressed_bytes: u64,
    pub unpacked_bytes: u64,
    pub files: u64,
    pub rounds: Vec<Round>,
    pub banger_median: Timing,
    pub pipeline_median: Timing,
    /// banger's median seconds over the pipeline's: below 1.0, banger is faster.
    pub ratio: f64,
}

impl PullReport {
    pub fn new(compressed_bytes: u64, unpacked_bytes: u64, files: u64, rounds: Vec<Round>) -> PullReport {
        let median_of = |side: fn(&Round) -> f64| {
            let seconds = median(rounds.iter().map(side).collect());
            Timing::new(seconds, compressed_bytes, unpacked_bytes)
        };
        let banger_median = median_of(|r| r.banger.seconds);
        let pipeline_median = median_of(|r| r.pipeline.seconds);
        let ratio = banger_median.seconds / pipeline_median.seconds;
        PullReport { compressed_bytes, unpacked_bytes, files, rounds, banger_median, pipeline_median, ratio }
    }

    pub fn print_table(&self) {
        println!(
            "bundle: {:.1} MB compressed, {:.1} MB in {} files unpacked (MB = 10^6 bytes)",
            self.compressed_bytes as f64 / 1e6,
            self.unpacked_bytes as f64 / 1e6,
            self.files
        );
        println!();
        println!("{:<8} {:<10} {:>9} {:>10} {:>10}", "round", "side", "seconds", "zst MB/s", "out MB/s");
        let row = |label: &str, side: &str, t: &Timing| {
            println!("{label:<8} {side:<10} {:>9.3} {:>10.1} {:>10.1}", t.seconds, t.compressed_mb_s, t.unpacked_mb_s);
        };
        for round in &self.rounds {
            row(&round.round.to_string(), "banger", &round.banger);
            row("", "pipeline", &round.pipeline);
        }
        row("median", "banger", &self.banger_median);
        row("", "pipeline", &self.pipeline_median);
        println!();
        let verdict = if self.ratio <= 1.0 { "banger is as fast or faster" } else { "banger is slower" };
        println!("ratio = banger_median / pipeline_median = {:.3} ({verdict})", self.ratio);
    }
}

/// The middle value; the mean of the two middle ones for an even count.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if mid * 2 == values.len() {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
