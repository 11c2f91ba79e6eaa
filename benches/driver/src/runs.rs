//! Where a suite's figures come from, and when they may be judged: every suite run records its
//! provenance (`SUITE.meta.json`, written by `benches/run.sh`: date, command, mode, load, git
//! revision and the code's fingerprint from `benches/fingerprint.sh`) and keeps a copy of its raw
//! JSON under `runs/SUITE/`. A suite measured on other code than the report's is stale: its figures
//! are shown, its verdicts are not. A figure within [`BORDERLINE`] of its target is judged by the
//! median over every run of the suite on the same code and mode, once there are [`RUNS_TO_JUDGE`].

use std::path::Path;

use serde_json::Value;

/// How close to its target a figure is borderline: 10% of the target.
pub const BORDERLINE: f64 = 0.10;
/// Runs on the same code and mode a borderline figure is judged over.
pub const RUNS_TO_JUDGE: usize = 3;

/// One suite run's provenance.
#[derive(Debug, Clone)]
pub struct SuiteRun {
    pub run: String,
    pub command: String,
    pub mode: String,
    pub load: String,
    pub revision: String,
    pub fingerprint: String,
}

impl SuiteRun {
    pub fn from_meta(meta: &Value) -> SuiteRun {
        let text = |key: &str, default: &str| meta[key].as_str().unwrap_or(default).to_owned();
        SuiteRun {
            run: text("run", "not recorded"),
            command: text("command", "not recorded"),
            mode: text("mode", "?"),
            load: text("load", "not stated"),
            revision: text("revision", "not recorded"),
            fingerprint: text("fingerprint", ""),
        }
    }

    /// The line every section starts with.
    pub fn describe(&self) -> String {
        format!(
            "_Run: `{}` ({} mode) at {}, revision `{}` (code fingerprint `{}`); load: {}._",
            self.command,
            self.mode,
            self.run,
            self.revision,
            if self.fingerprint.is_empty() {
                "not recorded"
            } else {
                &self.fingerprint
            },
            self.load
        )
    }

    /// Whether these figures measured the code the report is about.
    pub fn is_current(&self, fingerprint: &str) -> bool {
        !self.fingerprint.is_empty() && self.fingerprint == fingerprint
    }
}

/// A target's threshold: the figure must be at most (or at least) `limit`.
#[derive(Debug, Clone, Copy)]
pub enum Threshold {
    AtMost(f64),
    AtLeast(f64),
}

impl Threshold {
    pub fn met(self, value: f64) -> bool {
        match self {
            Threshold::AtMost(limit) => value <= limit,
            Threshold::AtLeast(limit) => value >= limit,
        }
    }

    pub fn is_borderline(self, value: f64) -> bool {
        let (Threshold::AtMost(limit) | Threshold::AtLeast(limit)) = self;
        limit != 0.0 && ((value - limit) / limit).abs() <= BORDERLINE
    }
}

/// The results of every kept run of `suite` on the code `fingerprint` in `mode`, oldest first.
pub fn runs_of(results: &Path, suite: &str, fingerprint: &str, mode: &str) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(results.join("runs").join(suite)) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(&std::fs::read_to_string(p).ok()?).ok())
        .filter(|run| {
            let meta = SuiteRun::from_meta(&run["meta"]);
            meta.is_current(fingerprint) && meta.mode == mode
        })
        .map(|mut run| run["results"].take())
        .collect()
}

/// The verdict on a figure: met or not from this run alone when it is clear; when borderline,
/// from the median of `history` (this figure in each kept run on the same code), with the reason.
pub fn judge(value: f64, threshold: Threshold, history: &[f64]) -> (Option<bool>, String) {
    if !threshold.is_borderline(value) {
        return (Some(threshold.met(value)), String::new());
    }
    let shown: Vec<String> = history.iter().map(|v| format!("{v:.2}")).collect();
    if history.len() < RUNS_TO_JUDGE {
        return (
            None,
            format!(
                "borderline (within {:.0}% of the target): judged over {RUNS_TO_JUDGE} runs of this code, {} so far [{}]",
                BORDERLINE * 100.0,
                history.len(),
                shown.join(", ")
            ),
        );
    }
    let median = crate::median_of(history.to_vec()).unwrap_or(value);
    (
        Some(threshold.met(median)),
        format!(
            "borderline: median {median:.2} of {} runs of this code [{}]",
            history.len(),
            shown.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_figure_is_judged_from_one_run() {
        assert_eq!(
            judge(1.2, Threshold::AtMost(1.5), &[]),
            (Some(true), String::new())
        );
        assert_eq!(judge(2.0, Threshold::AtMost(1.5), &[]).0, Some(false));
        assert_eq!(judge(2.5, Threshold::AtLeast(2.0), &[]).0, Some(true));
    }

    #[test]
    fn a_borderline_figure_waits_for_enough_runs_then_takes_their_median() {
        let (met, why) = judge(1.4994, Threshold::AtMost(1.5), &[1.4994]);
        assert_eq!(met, None);
        assert!(why.contains("1 so far"), "{why}");
        // The best of three runs would pass; their median does not.
        let (met, why) = judge(1.4994, Threshold::AtMost(1.5), &[1.60, 1.4994, 1.55]);
        assert_eq!(met, Some(false), "{why}");
        let (met, _) = judge(1.52, Threshold::AtMost(1.5), &[1.52, 1.45, 1.48]);
        assert_eq!(met, Some(true));
    }
}
