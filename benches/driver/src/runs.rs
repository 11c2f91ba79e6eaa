//! Where a suite's figures come from, and when they may be judged: every suite run records its
//! provenance (`SUITE.meta.json`, written by `benches/run.sh`: date, command, mode, load, git
//! revision and the code's fingerprint from `benches/fingerprint.sh`) and keeps a copy of its raw
//! JSON under `runs/SUITE/`. A suite measured on other code than the report's is stale: its figures
//! are shown, its verdicts are not. A figure is judged by its median over every kept run of the
//! suite on the same code and mode (one run: its own figure); a median within [`BORDERLINE`] of
//! its target is judged once there are [`RUNS_TO_JUDGE`] runs.

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

/// The verdict on a figure from every kept run of the same code (`history`: this figure in each,
/// the report's run among them; `value` alone when there is none): one run is judged alone when
/// its figure is clear; several are judged by their median, so a clear last run never outvotes
/// the others; a borderline median waits for [`RUNS_TO_JUDGE`] runs. Says how, when more than one
/// run or a borderline figure went into it.
pub fn judge(value: f64, threshold: Threshold, history: &[f64]) -> (Option<bool>, String) {
    let figures = if history.is_empty() {
        vec![value]
    } else {
        history.to_vec()
    };
    let shown: Vec<String> = figures.iter().map(|v| format!("{v:.2}")).collect();
    let median = crate::median_of(figures.clone()).unwrap_or(value);
    if !threshold.is_borderline(median) {
        let how = if figures.len() > 1 {
            format!(
                "median {median:.2} of {} runs of this code [{}]",
                figures.len(),
                shown.join(", ")
            )
        } else {
            String::new()
        };
        return (Some(threshold.met(median)), how);
    }
    if figures.len() < RUNS_TO_JUDGE {
        return (
            None,
            format!(
                "borderline (within {:.0}% of the target): judged over {RUNS_TO_JUDGE} runs of this code, {} so far [{}]",
                BORDERLINE * 100.0,
                figures.len(),
                shown.join(", ")
            ),
        );
    }
    (
        Some(threshold.met(median)),
        format!(
            "borderline: median {median:.2} of {} runs of this code [{}]",
            figures.len(),
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

    #[test]
    fn several_runs_are_judged_by_their_median_even_when_the_last_is_clear() {
        // The report's run alone (2.23) would be clearly met; the three runs of the same code
        // are not.
        let (met, why) = judge(2.23, Threshold::AtLeast(2.0), &[1.95, 1.80, 2.23]);
        assert_eq!(met, Some(false), "{why}");
        assert!(why.contains("median 1.95 of 3 runs"), "{why}");
        // Two runs with a clear median: judged, and said how.
        let (met, why) = judge(1.2, Threshold::AtMost(1.5), &[1.1, 1.2]);
        assert_eq!(met, Some(true));
        assert!(why.contains("median 1.15 of 2 runs"), "{why}");
        // Two runs with a borderline median: waits for the third.
        let (met, why) = judge(2.23, Threshold::AtLeast(2.0), &[1.95, 2.23]);
        assert_eq!(met, None, "{why}");
    }
}
