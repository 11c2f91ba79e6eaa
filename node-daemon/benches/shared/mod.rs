//! What the node daemon's benchmarks share: their settings from the environment and their
//! JSON output for `benches/run.sh`.

/// The environment variable `key`, or `default`.
pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// With `PIER_BENCH_JSON=/path/file.json` set, writes the figures there as one JSON document
/// (read by `benches/run.sh`), besides the human-readable table on stdout.
pub fn write_json(document: &serde_json::Value) {
    if let Ok(path) = std::env::var("PIER_BENCH_JSON") {
        let text = serde_json::to_string_pretty(document).expect("JSON of plain numbers");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("PIER_BENCH_JSON={path}: {e}"));
    }
}

/// A figure's samples in the order they were taken (committed with the report, so anyone can
/// recompute a verdict) and their median, minimum and maximum.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

/// [`Stats`] of `samples` (at least one).
pub fn stats(samples: Vec<f64>) -> Stats {
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Stats {
        median,
        min: sorted[0],
        max: sorted[n - 1],
        samples,
    }
}
