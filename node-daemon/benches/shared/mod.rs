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
