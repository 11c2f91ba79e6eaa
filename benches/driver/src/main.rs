//! `pier-bench`: turns the JSON documents written by the bench suites (`PIER_BENCH_JSON`) and
//! criterion's estimates into one Markdown report (`BENCHMARKS.md`) with every target
//! marked met / not met (and, when not met, what limits it), SVG plots of latency against
//! N for Pier and its peer, the machine, the versions and the exact command. `benches/run.sh`
//! runs the suites, then this. Kept out of the `pier` binary so plotting never becomes a
//! dependency of the product.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::Value;

mod chart;
mod docker;
mod fanout;
mod incremental;
mod memory;
mod overlay;
mod runs;
mod teardown;

use runs::{SuiteRun, Threshold};

/// Command-line arguments: `--results DIR --criterion DIR --out DIR --mode M --command TEXT
/// [--notes DIR] [--load TEXT] [--benchmarks FILE] [--image-prefix TEXT] [--run-id TEXT] [--suites TEXT] [--fingerprint HASH] [--readme FILE]`.
#[derive(Debug)]
struct Args {
    results: PathBuf,
    criterion: PathBuf,
    /// Where the plots go (and a README.md pointing at the report).
    out: PathBuf,
    notes: PathBuf,
    mode: String,
    command: String,
    load: String,
    /// The report itself (default: OUT/BENCHMARKS.md).
    benchmarks: Option<PathBuf>,
    /// How the report links the plots (default: relative to OUT, i.e. nothing).
    image_prefix: String,
    /// This run's identity (its start time); a suite whose `SUITE.meta.json` names another run
    /// is marked as from an earlier run.
    run_id: String,
    /// The suites this run ran (space-separated).
    suites: String,
    /// A Markdown file (README.md) whose summary block gets the headline targets.
    readme: Option<PathBuf>,
    /// The code this report is about (`benches/fingerprint.sh`): suites measured on other code
    /// are stale.
    fingerprint: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        results: PathBuf::from("benches/report/json"),
        criterion: PathBuf::from("target/criterion"),
        out: PathBuf::from("benches/report"),
        notes: PathBuf::from("benches/notes"),
        mode: "quick".to_owned(),
        command: "benches/run.sh".to_owned(),
        load: "not stated".to_owned(),
        benchmarks: None,
        image_prefix: String::new(),
        run_id: String::new(),
        suites: String::new(),
        fingerprint: String::new(),
        readme: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--results" => args.results = value.into(),
            "--criterion" => args.criterion = value.into(),
            "--out" => args.out = value.into(),
            "--notes" => args.notes = value.into(),
            "--mode" => args.mode = value,
            "--command" => args.command = value,
            "--load" => args.load = value,
            "--benchmarks" => args.benchmarks = Some(value.into()),
            "--image-prefix" => args.image_prefix = value,
            "--run-id" => args.run_id = value,
            "--suites" => args.suites = value,
            "--fingerprint" => args.fingerprint = value,
            "--readme" => args.readme = Some(value.into()),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// First line of a command's output (stdout, else stderr), or "not installed".
fn version_of(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(_) => "not installed".to_owned(),
    }
}

fn deb_version(package: &str) -> String {
    let v = version_of("dpkg-query", &["-W", "-f", "${Version}", package]);
    if v.is_empty() || v.contains("no packages found") {
        "not installed".to_owned()
    } else {
        format!("{v} (Debian package)")
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map_or_else(
            || "unknown".to_owned(),
            |kb| format!("{:.1} GiB", kb / 1048576.0),
        );
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown OS".to_owned());
    format!(
        "{model}, {cores} cores, {memory} RAM, Linux {}, {os}",
        kernel.trim()
    )
}

/// `{median, min, max}` as "median (min-max)".
fn mmm(v: &Value, digits: usize) -> String {
    match (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64()) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})"),
        _ => "not measured".to_owned(),
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn fmt_opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}{unit}"))
}

/// One target, for the summary and the section's verdict table.
struct Target {
    /// What it measures: the part of Pier, as the summary's first column names it.
    area: &'static str,
    target: String,
    measured: String,
    met: Option<bool>,
    /// `met` in words, or why there is no verdict (stale, borderline).
    verdict: String,
    /// What limits it, shown when not met.
    limit: String,
}

/// The report being written: the sections' Markdown and every target seen.
struct Report {
    md: String,
    targets: Vec<Target>,
    /// The current section's suite and where its figures come from.
    section: Option<(String, SuiteRun)>,
    /// Where the suites' JSON (and `runs/`) are, and the report's code fingerprint.
    results: PathBuf,
    fingerprint: String,
}

impl Report {
    /// Whether the current section measured other code than the report's.
    fn stale(&self) -> Option<&SuiteRun> {
        self.section
            .as_ref()
            .map(|(_, run)| run)
            .filter(|run| !run.is_current(&self.fingerprint))
    }

    /// Records a target and writes its row in the current section's verdict table.
    fn target(
        &mut self,
        area: &'static str,
        target: &str,
        measured: String,
        met: Option<bool>,
        limit: &str,
    ) {
        self.record(area, target, measured, met, verdict(met).to_owned(), limit);
    }

    fn record(
        &mut self,
        area: &'static str,
        target: &str,
        mut measured: String,
        mut met: Option<bool>,
        mut verdict: String,
        limit: &str,
    ) {
        if let Some(run) = self.stale() {
            let _ = write!(measured, " (stale: revision {})", run.revision);
            met = None;
            verdict = "stale: measured on other code".to_owned();
        }
        let _ = writeln!(self.md, "| {target} | {measured} | {verdict} |");
        self.targets.push(Target {
            area,
            target: target.to_owned(),
            measured,
            met,
            verdict,
            limit: limit.to_owned(),
        });
    }

    /// A target whose figure is `value` (from this run's JSON) against `threshold`; when it is
    /// borderline, judged over the kept runs of this suite on the same code, each giving its
    /// figure through `figure`.
    fn judged(
        &mut self,
        area: &'static str,
        target: &str,
        measured: String,
        (value, threshold): (Option<f64>, Threshold),
        figure: impl Fn(&Value) -> Option<f64>,
        limit: &str,
    ) {
        let Some(value) = value.filter(|_| self.stale().is_none()) else {
            self.target(
                area,
                target,
                measured,
                value.map(|v| threshold.met(v)),
                limit,
            );
            return;
        };
        // The runs of this suite in the mode it was measured in (the report's mode is the last
        // run's, which may have run other suites in another).
        let (suite, mode) = self
            .section
            .as_ref()
            .map(|(suite, run)| (suite.clone(), run.mode.clone()))
            .unwrap_or_default();
        let history: Vec<f64> = runs::runs_of(&self.results, &suite, &self.fingerprint, &mode)
            .iter()
            .filter_map(&figure)
            .collect();
        let (met, why) = runs::judge(value, threshold, &history);
        let measured = if why.is_empty() {
            measured
        } else {
            format!("{measured}; {why}")
        };
        let verdict = match met {
            None if !why.is_empty() => "not judged yet (borderline)".to_owned(),
            other => verdict(other).to_owned(),
        };
        self.record(area, target, measured, met, verdict, limit);
    }

    /// Starts a section's figures: where they come from, and whether they are stale.
    fn section_run(&mut self, args: &Args, suite: &str) {
        let meta = read_json(&args.results.join(format!("{suite}.meta.json"))).unwrap_or_default();
        let run = SuiteRun::from_meta(&meta);
        let _ = write!(self.md, "{}\n\n", run.describe());
        if !run.is_current(&args.fingerprint) {
            let _ = write!(
                self.md,
                "**Stale:** these figures measured other code (fingerprint `{}`) than this report's (`{}`); \
                 they are shown, not judged. Run the suite again for verdicts.\n\n",
                if run.fingerprint.is_empty() {
                    "not recorded"
                } else {
                    &run.fingerprint
                },
                args.fingerprint
            );
        }
        self.section = Some((suite.to_owned(), run));
    }

    fn verdict_header(&mut self) {
        self.md
            .push_str("\n| target | measured | verdict |\n|---|---:|---|\n");
    }

    /// A target whose suite did not run: listed in the summary as not measured.
    fn not_run(&mut self, area: &'static str, targets: &[&str], why: &str) {
        for t in targets {
            self.targets.push(Target {
                area,
                target: (*t).to_owned(),
                measured: why.to_owned(),
                met: None,
                verdict: verdict(None).to_owned(),
                limit: String::new(),
            });
        }
    }
}

/// One line of a plot: a name and (N, median, min, max) points.
type Series = (String, Vec<(f64, f64, f64, f64)>);

fn plot(path: &Path, title: &str, x_label: &str, series: &[Series]) -> Result<()> {
    let points: Vec<_> = series.iter().flat_map(|(_, p)| p.iter()).collect();
    if points.is_empty() {
        return Ok(());
    }
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let x_min = points.iter().map(|p| p.0).fold(f64::MAX, f64::min) / 1.5;
    let y_max = points.iter().map(|p| p.3).fold(0.0, f64::max) * 1.1;
    let frame = chart::Frame::new(title, x_label, "ms (median; bars: min-max)");
    let x = (x_min..x_max).log_scale();
    chart::draw(path, frame, x, 0.0..y_max.max(1e-3), |c| {
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = chart::color(i);
            chart::line(c, pts.iter().map(|p| (p.0, p.1)), color, name.clone())?;
            c.draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, p.1), 3, color.filled())),
            )?;
            c.draw_series(
                pts.iter()
                    .map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], color)),
            )?;
        }
        Ok(())
    })
}

/// The raw samples of one figure in the order they were taken (x: sample number), one line
/// per series: how a suite's repetitions spread and drift.
fn plot_samples(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    let longest = series.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    if longest == 0 {
        return Ok(());
    }
    let y_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        * 1.1;
    let frame = chart::Frame::new(title, "sample, in the order taken", y_desc);
    let x = 0.0..(longest as f64 + 1.0);
    chart::draw(path, frame, x, 0.0..y_max.max(1e-3), |c| {
        for (i, (name, samples)) in series.iter().enumerate() {
            let color = chart::color(i);
            c.draw_series(
                samples
                    .iter()
                    .enumerate()
                    .map(|(n, v)| Circle::new((n as f64 + 1.0, *v), 2, color.filled())),
            )?
            .label(name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, color.filled()));
        }
        Ok(())
    })
}

/// The `samples` array of a figure (`{median, min, max, samples}`), empty when not kept.
fn samples_of(figure: &Value) -> Vec<f64> {
    figure["samples"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// Plots the named figures' samples into OUT/NAME.svg and links it from the report.
fn samples_plot(
    r: &mut Report,
    args: &Args,
    name: &str,
    title: &str,
    y_desc: &str,
    series: Vec<(String, Vec<f64>)>,
) -> Result<()> {
    if series.iter().all(|(_, s)| s.is_empty()) {
        return Ok(());
    }
    plot_samples(
        &args.out.join(format!("{name}.svg")),
        title,
        y_desc,
        &series,
    )?;
    writeln!(r.md, "\n![{title}]({IMG}{name}.svg)")?;
    Ok(())
}

fn series_of(rows: &[Value], x_key: &str, y_key: &str) -> Vec<(f64, f64, f64, f64)> {
    rows.iter()
        .filter_map(|r| {
            let s = &r[y_key];
            Some((
                r[x_key].as_f64()?,
                s["median"].as_f64()?,
                s["min"].as_f64()?,
                s["max"].as_f64()?,
            ))
        })
        .collect()
}

fn notes(dir: &Path, section: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{section}.md")))
        .map(|t| format!("\n{}\n", t.trim_end()))
        .unwrap_or_default()
}

/// Placeholder for the plots' folder, replaced by the prefix of each output.
const IMG: &str = "@IMG@/";

fn ipam(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "## IPAM\n")?;
    writeln!(
        r.md,
        "Command: `cargo bench -p pier-operator --bench ipam` (criterion; quick mode: `-- --warm-up-time 1 --measurement-time 2 'ipam/(fill_slash16|first_1000_of_slash64)'`).\n\
         Allocate every dynamic address of an empty 172.18.0.0/16 (65,533), each with its owner; \
         and the first 1,000 IPv6 addresses of an empty /64."
    )?;
    // What run.sh kept of criterion's estimates, else criterion's own files.
    let kept = read_json(&args.results.join("ipam.json"));
    let median_ms = |field: &str, bench: &str| {
        kept.as_ref()
            .and_then(|j| j[field].as_f64())
            .or_else(|| {
                read_json(
                    &args
                        .criterion
                        .join(format!("ipam/{bench}/new/estimates.json")),
                )
                .and_then(|e| e["median"]["point_estimate"].as_f64())
            })
            .map(|ns| ns / 1e6)
    };
    let ms = median_ms("fill_slash16_65533_median_ns", "fill_slash16_65533");
    let ms6 = median_ms("first_1000_of_slash64_median_ns", "first_1000_of_slash64");
    if kept.is_some() {
        r.section_run(args, "ipam");
    }
    r.verdict_header();
    let measured = |m: Option<f64>, digits: usize| {
        m.map_or_else(
            || "not measured".to_owned(),
            |m| format!("{m:.digits$} ms (criterion median)"),
        )
    };
    r.target(
        "IPAM",
        "fill a /16 (65,533 addresses) < 50 ms",
        measured(ms, 1),
        ms.map(|m| m < 50.0),
        "",
    );
    r.target(
        "IPAM, IPv6",
        "first 1,000 allocations in a /64 < 5 ms",
        measured(ms6, 3),
        ms6.map(|m| m < 5.0),
        "",
    );
    if let Some(kept) = &kept {
        let samples = |key: &str| {
            kept[key]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        };
        samples_plot(
            r,
            args,
            "ipam",
            "IPAM: criterion's samples (time per iteration)",
            "ms",
            vec![
                (
                    "fill a /16".to_owned(),
                    samples("fill_slash16_65533_samples_ms"),
                ),
                (
                    "first 1,000 of a /64".to_owned(),
                    samples("first_1000_of_slash64_samples_ms"),
                ),
            ],
        )?;
    }
    r.md.push_str(&notes(&args.notes, "ipam"));
    Ok(())
}

/// The runs of one iperf3 path, e.g. `[16.6, 18.8, 17.1]`; `-` where an older run kept none.
fn gbps_list(runs: &serde_json::Value) -> String {
    match runs.as_array() {
        Some(runs) => {
            let shown: Vec<String> = runs
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .map(|g| format!("{g:.1}"))
                .collect();
            format!("[{}]", shown.join(", "))
        }
        None => "-".to_owned(),
    }
}

fn attach(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## Dataplane attach and detach\n")?;
    let Some(attach) = read_json(&args.results.join("attach.json")) else {
        writeln!(r.md, "Attach: not measured in this run.")?;
        r.not_run(
            "attach",
            &[
                "attach < 10 ms median at every size",
                "attach: largest / smallest size <= 1.5x",
                "dual-stack attach within 1.5x of IPv4-only, at every size",
                "iperf3 through a published port within 10% of direct",
            ],
            "suite `attach` not run",
        );
        return Ok(());
    };
    r.section_run(args, "attach");
    let families = attach_families(&attach);
    let (baseline, rows, other_family_rows) = attach_rows(&attach);
    let interleaved = attach["interleaved"].as_bool().unwrap_or(false);
    writeln!(
        r.md,
        "Command: `PIER_BENCH_SIZES={} PIER_BENCH_REPS={} PIER_BENCH_IPERF={} PIER_BENCH_FAMILIES={} cargo bench -p pier-node --bench attach` \
         (`node-daemon/benches/attach.rs`). One more endpoint attached to a node (its own network namespace) that \
         already has N endpoints over 4 bridges, then removed again; netavark `setup`/`teardown` (Debian package, \
         run as a process, as a container runtime does) on its own node of the same size{}.\n",
        rows.iter()
            .filter_map(|r| r["endpoints"].as_u64())
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
        attach["repetitions"],
        if attach["iperf3"].is_null() { 0 } else { 1 },
        if families.is_empty() {
            "ipv4".to_owned()
        } else {
            families.join(",")
        },
        if interleaved {
            ", back to back with Pier in every repetition; the ratios are medians of netavark / Pier per repetition (pair by pair)"
        } else {
            " (this run: after all of Pier's repetitions, so the ratio is of medians)"
        }
    )?;
    writeln!(
        r.md,
        "- Pier attach: `Dataplane::apply` in `Scope::Endpoints` (the node agent's attach path: reads back the bridges and the new veth, plans and applies it and table `inet pier`).\n\
         - Pier detach: `Dataplane::apply` in `Scope::Removal` of its veth and its bridge with the state without it (the agent's detach path: reads those links by name and table `inet pier`, deletes the veth; the bridge stays for the others; most of it is the kernel deleting the veth).\n\
         - Pier full apply: the start-up/periodic reconcile with the new endpoint.\n"
    )?;
    writeln!(
        r.md,
        "{} repetitions per size; ms, median (min-max).\n",
        attach["repetitions"]
    )?;
    writeln!(
        r.md,
        "| endpoints | Pier attach | netavark setup | setup: netavark / Pier | Pier detach | netavark teardown | teardown: netavark / Pier | Pier full apply |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let ratio = |row: &Value, per_pair: &str, theirs: &str, ours: &str| -> String {
        if let Some(m) = row[per_pair]["median"].as_f64() {
            return format!(
                "{m:.1}x ({:.1}-{:.1}x)",
                row[per_pair]["min"].as_f64().unwrap_or(f64::NAN),
                row[per_pair]["max"].as_f64().unwrap_or(f64::NAN)
            );
        }
        match (row[theirs]["median"].as_f64(), row[ours]["median"].as_f64()) {
            (Some(t), Some(o)) if o > 0.0 => format!("{:.1}x (of medians)", t / o),
            _ => "-".to_owned(),
        }
    };
    for row in &rows {
        writeln!(
            r.md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row["endpoints"],
            mmm(&row["pier_attach_ms"], 2),
            mmm(&row["netavark_setup_ms"], 1),
            ratio(
                row,
                "setup_ratio_per_pair",
                "netavark_setup_ms",
                "pier_attach_ms"
            ),
            mmm(&row["pier_detach_ms"], 2),
            mmm(&row["netavark_teardown_ms"], 1),
            ratio(
                row,
                "teardown_ratio_per_pair",
                "netavark_teardown_ms",
                "pier_detach_ms"
            ),
            mmm(&row["pier_full_apply_ms"], 2),
        )?;
    }
    let worst = rows
        .iter()
        .filter_map(|r| r["pier_attach_ms"]["median"].as_f64())
        .reduce(f64::max);
    let sizes: Vec<u64> = rows
        .iter()
        .filter_map(|r| r["endpoints"].as_u64())
        .collect();
    let flat = attach_growth(&rows, "median");
    let spans_1000 = sizes.first() == Some(&10) && sizes.last() == Some(&1000);
    r.verdict_header();
    r.target(
        "attach",
        "attach < 10 ms median at every size",
        worst.map_or("-".to_owned(), |w| format!("worst median {w:.2} ms")),
        worst.map(|w| w < 10.0),
        "",
    );
    r.judged(
        "attach",
        "attach: largest / smallest size <= 1.5x (10 -> 1000 endpoints)",
        match flat {
            Some(f) => format!(
                "{f:.2}x of medians, {} of minima ({} -> {})",
                fmt_opt(attach_growth(&rows, "min"), 2, "x"),
                sizes.first().unwrap_or(&0),
                sizes.last().unwrap_or(&0)
            ),
            None => "-".to_owned(),
        },
        (flat.filter(|_| spans_1000), Threshold::AtMost(1.5)),
        |run| attach_growth(&attach_rows(run).1, "median"),
        "what still grows with N is kernel work, found by timing each step at 10 and 1000 endpoints: \
         the kernel's IPv4 address dump walks every device, and creating a veth on a bridge with \
         hundreds of ports takes longer; medians also carry time spent waiting for one of the 2 \
         shared CPUs (compare the minima)",
    );
    family_ratios(r, &baseline, &other_family_rows)?;
    if let (Some(d), Some(p)) = (
        attach["iperf3"]["direct_gbps"].as_f64(),
        attach["iperf3"]["published_gbps"].as_f64(),
    ) {
        r.judged(
            "attach",
            "iperf3 through a published port within 10% of direct",
            format!(
                "{p:.2} vs {d:.2} Gbit/s ({:.0}%; medians of alternating 5 s runs: {} vs {})",
                p / d * 100.0,
                gbps_list(&attach["iperf3"]["published_runs_gbps"]),
                gbps_list(&attach["iperf3"]["direct_runs_gbps"]),
            ),
            (Some(p / d), Threshold::AtLeast(0.9)),
            |run| {
                Some(
                    run["iperf3"]["published_gbps"].as_f64()?
                        / run["iperf3"]["direct_gbps"].as_f64()?,
                )
            },
            "5 s iperf3 runs on the shared machine vary by +-30% from run to run (see the runs); \
             the published path adds one DNAT lookup per connection, not per packet",
        );
    } else {
        r.not_run(
            "attach",
            &["iperf3 through a published port within 10% of direct"],
            "not run in this mode (PIER_BENCH_IPERF=0)",
        );
    }
    plot(
        &args.out.join("attach.svg"),
        "Attach latency vs endpoints on the node",
        "endpoints on the node",
        &[
            (
                "Pier attach".to_owned(),
                series_of(&rows, "endpoints", "pier_attach_ms"),
            ),
            (
                "netavark setup".to_owned(),
                series_of(&rows, "endpoints", "netavark_setup_ms"),
            ),
        ],
    )?;
    writeln!(r.md, "\n![attach latency]({IMG}attach.svg)")?;
    let detach = [
        (
            "Pier detach".to_owned(),
            series_of(&rows, "endpoints", "pier_detach_ms"),
        ),
        (
            "netavark teardown".to_owned(),
            series_of(&rows, "endpoints", "netavark_teardown_ms"),
        ),
    ];
    if detach.iter().any(|(_, p)| !p.is_empty()) {
        plot(
            &args.out.join("detach.svg"),
            "Detach latency vs endpoints on the node",
            "endpoints on the node",
            &detach,
        )?;
        writeln!(r.md, "![detach latency]({IMG}detach.svg)")?;
    }
    r.md.push_str(&notes(&args.notes, "attach"));
    Ok(())
}

/// The address families of an attach run (`PIER_BENCH_FAMILIES`), in order.
fn attach_families(attach: &Value) -> Vec<String> {
    attach["families"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An attach run's rows: with several families, the first one is the baseline the main table,
/// netavark and the flatness verdict are about; the others are judged relative to it.
fn attach_rows(attach: &Value) -> (String, Vec<Value>, Vec<Value>) {
    let baseline = attach_families(attach)
        .into_iter()
        .next()
        .unwrap_or_else(|| "ipv4".to_owned());
    let (rows, others) = attach["sizes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .partition(|row| row["family"].as_str().is_none_or(|f| f == baseline));
    (baseline, rows, others)
}

/// Attach time at the largest size / at the smallest, of the rows' `statistic` (median, min).
fn attach_growth(rows: &[Value], statistic: &str) -> Option<f64> {
    let values: Vec<f64> = rows
        .iter()
        .filter_map(|r| r["pier_attach_ms"][statistic].as_f64())
        .collect();
    match (values.first(), values.last()) {
        (Some(first), Some(last)) if values.len() > 1 && *first > 0.0 => Some(last / first),
        _ => None,
    }
}

/// The largest median ratio of dual-stack attach to IPv4-only attach, and at which size.
fn worst_dual_ratio(rows: &[Value]) -> Option<(f64, u64)> {
    rows.iter()
        .filter(|row| row["family"] == "dual")
        .filter_map(|row| {
            Some((
                row["attach_ratio_to_first_family_per_pair"]["median"].as_f64()?,
                row["endpoints"].as_u64()?,
            ))
        })
        .reduce(|a, b| if b.0 > a.0 { b } else { a })
}

/// The dual-stack target: attach of a dual-stack endpoint / of an IPv4-only one, per pair of
/// back-to-back repetitions at the same size, judged at every size by the median of those ratios.
fn family_ratios(r: &mut Report, baseline: &str, rows: &[Value]) -> Result<()> {
    const TARGET: &str = "dual-stack attach within 1.5x of IPv4-only, at every size";
    let dual: Vec<&Value> = rows.iter().filter(|row| row["family"] == "dual").collect();
    if dual.is_empty() || baseline != "ipv4" {
        r.not_run(
            "attach",
            &[TARGET],
            "not run in this mode (needs PIER_BENCH_FAMILIES=ipv4,dual)",
        );
        return Ok(());
    }
    writeln!(
        r.md,
        "\nOther address families on nodes of the same sizes, in the same repetitions (each one right after the \
         IPv4-only node of its size): attach in ms, median (min-max), and its ratio to IPv4-only attach, pair by pair.\n\n\
         | family | endpoints | Pier attach | Pier detach | attach / IPv4-only attach |\n|---|---:|---:|---:|---:|"
    )?;
    for row in rows {
        writeln!(
            r.md,
            "| {} | {} | {} | {} | {} |",
            row["family"].as_str().unwrap_or("-"),
            row["endpoints"],
            mmm(&row["pier_attach_ms"], 2),
            mmm(&row["pier_detach_ms"], 2),
            mmm(&row["attach_ratio_to_first_family_per_pair"], 2),
        )?;
    }
    let worst = worst_dual_ratio(rows);
    r.judged(
        "attach",
        TARGET,
        worst.map_or("-".to_owned(), |(ratio, size)| {
            format!("worst median ratio {ratio:.2}x (at {size} endpoints)")
        }),
        (worst.map(|(ratio, _)| ratio), Threshold::AtMost(1.5)),
        |run| worst_dual_ratio(&attach_rows(run).2).map(|(ratio, _)| ratio),
        "a dual-stack endpoint has twice the addresses and routes, and IPv6 addresses are added \
         without DAD (nodad), so the extra time is the second family's netlink requests",
    );
    Ok(())
}

fn ports(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## Published ports\n")?;
    let Some(ports) = read_json(&args.results.join("ports.json")) else {
        writeln!(r.md, "Ports: not measured in this run.")?;
        r.not_run(
            "ports",
            &["add one port with 1000 published < 5 ms median"],
            "suite `ports` not run",
        );
        return Ok(());
    };
    r.section_run(args, "ports");
    let rows = ports["sizes"].as_array().cloned().unwrap_or_default();
    writeln!(
        r.md,
        "Command: `PIER_BENCH_SIZES={} PIER_BENCH_REPS={} cargo bench -p pier-node --bench ports` \
         (`node-daemon/benches/ports.rs`, in a namespace of its own). Add one published port to a node \
         that publishes N (`firewall::plan`, which reads table `inet pier` back from the kernel, then \
         `firewall::apply`, one nf_tables batch), then remove it again the same way; {} ms pause before \
         each change. ms, median (min-max).\n",
        rows.iter()
            .filter_map(|r| r["ports"].as_u64())
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
        ports["repetitions"],
        ports["pause_ms"]
    )?;
    writeln!(
        r.md,
        "| ports already published | add one port (plan+apply) | of which plan | of which apply | remove it (plan+apply) | of which plan |\n|---:|---:|---:|---:|---:|---:|"
    )?;
    for row in &rows {
        writeln!(
            r.md,
            "| {} | {} | {} | {} | {} | {} |",
            row["ports"],
            mmm(&row["add_one_ms"], 2),
            mmm(&row["plan_ms"], 2),
            mmm(&row["apply_ms"], 2),
            mmm(&row["remove_one_ms"], 2),
            mmm(&row["remove_plan_ms"], 2)
        )?;
    }
    let at_largest = rows
        .last()
        .and_then(|r| Some((r["ports"].as_u64()?, r["add_one_ms"]["median"].as_f64()?)));
    r.verdict_header();
    r.target(
        "ports",
        "add one port with 1000 published < 5 ms median",
        at_largest.map_or("-".to_owned(), |(n, m)| format!("{m:.2} ms at {n}")),
        at_largest.filter(|(n, _)| *n >= 1000).map(|(_, m)| m < 5.0),
        "the plan reads every map element back from the kernel (about 1.5 µs per port)",
    );
    plot(
        &args.out.join("ports.svg"),
        "Add / remove one published port vs ports already published",
        "ports already published",
        &[
            (
                "Pier add (plan+apply)".to_owned(),
                series_of(&rows, "ports", "add_one_ms"),
            ),
            (
                "Pier remove (plan+apply)".to_owned(),
                series_of(&rows, "ports", "remove_one_ms"),
            ),
        ],
    )?;
    writeln!(r.md, "\n![port add latency]({IMG}ports.svg)")?;
    r.md.push_str(&notes(&args.notes, "ports"));
    Ok(())
}

fn median_of(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn dns(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## DNS\n")?;
    let Some(dns) = read_json(&args.results.join("dns.json")) else {
        writeln!(r.md, "DNS: not measured in this run.")?;
        r.not_run(
            "DNS",
            &[
                "QPS >= 2x aardvark-dns (per-round pairs)",
                "server CPU per answer: aardvark-dns needs >= 2x Pier's",
                "p99 < 1 ms at 10,000 QPS",
                "record update < 5 ms",
            ],
            "suite `dns` not run",
        );
        return Ok(());
    };
    r.section_run(args, "dns");
    let ratios: Vec<f64> = dns["qps_ratio_per_round"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let median_ratio = dns_qps_ratio(&dns);
    let rounds = |who: &str, key: &str| dns_rounds(&dns, who, key);
    let joined = |v: &[f64], digits: usize| {
        v.iter()
            .map(|q| format!("{q:.digits$}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    writeln!(
        r.md,
        "Command: `PIER_BENCH_ROUNDS={} cargo bench -p pier-node --bench dns` (`node-daemon/benches/dns.rs`): \
         Pier's DNS and aardvark-dns serve the same 201 names on the same bridge gateway of a namespace of \
         the bench's own; dnsperf asks from a container namespace. Max-QPS rounds alternate the servers \
         ({} dnsperf clients); then 10 s at 10,000 QPS each for latency, alone and again beside CPU-bound \
         processes (one per CPU), where each server is also flooded for max QPS; then record update latency.\n",
        dns["rounds"],
        dns["clients"].as_str().unwrap_or("?")
    )?;
    writeln!(
        r.md,
        "| server | max QPS per round | server CPU per query, µs (per round) | p50 / p99 / max µs at 10,000 QPS | the same beside CPU-bound processes | max QPS beside them |\n|---|---|---|---|---|---|"
    )?;
    let percentiles = |f: &Value| {
        if f.is_null() {
            return "not measured".to_owned();
        }
        format!(
            "{:.0} / {:.0} / {:.0}",
            f["p50_us"].as_f64().unwrap_or(f64::NAN),
            f["p99_us"].as_f64().unwrap_or(f64::NAN),
            f["max_us"].as_f64().unwrap_or(f64::NAN)
        )
    };
    for who in ["pier", "aardvark-dns"] {
        writeln!(
            r.md,
            "| {who} | {} | {} | {} | {} | {} |",
            joined(&rounds(who, "qps"), 0),
            joined(&rounds(who, "cpu_us"), 1),
            percentiles(&dns["at_10k_qps"][who]),
            percentiles(&dns["at_10k_qps_beside_busy_neighbours"][who]),
            dns["max_qps_beside_busy_neighbours"][who]["qps"]
                .as_f64()
                .map_or_else(|| "not measured".to_owned(), |q| format!("{q:.0}"))
        )?;
    }
    let cpu_ratio = dns_cpu_ratio(&dns);
    let p99 = dns["at_10k_qps"]["pier"]["p99_us"].as_f64();
    let update = dns["update_us"]["p50"].as_f64();
    r.verdict_header();
    r.judged(
        "DNS",
        "QPS >= 2x aardvark-dns (per-round pairs)",
        format!(
            "median {} (rounds: {})",
            fmt_opt(median_ratio, 2, "x"),
            ratios
                .iter()
                .map(|r| format!("{r:.2}x"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (median_ratio, Threshold::AtLeast(2.0)),
        dns_qps_ratio,
        &format!(
            "dnsperf, not Pier, saturates (dnsperf needs about one of the 2 CPUs, so the two servers \
             share what is left with it and with other load); the load-independent figure is server \
             CPU per answer, where aardvark-dns needs {} Pier's",
            fmt_opt(cpu_ratio, 1, "x")
        ),
    );
    r.judged(
        "DNS",
        "server CPU per answer: aardvark-dns needs >= 2x Pier's",
        format!(
            "{} (median µs per answer over the max-QPS rounds: aardvark-dns {}, Pier {})",
            fmt_opt(cpu_ratio, 2, "x"),
            fmt_opt(median_of(rounds("aardvark-dns", "cpu_us")), 1, ""),
            fmt_opt(median_of(rounds("pier", "cpu_us")), 1, "")
        ),
        (cpu_ratio, Threshold::AtLeast(2.0)),
        dns_cpu_ratio,
        "",
    );
    r.target(
        "DNS",
        "p99 < 1 ms at 10,000 QPS",
        fmt_opt(p99, 0, " µs"),
        p99.map(|p| p < 1000.0),
        "the tail is time spent waiting for one of the 2 shared CPUs (p50 stays flat)",
    );
    r.target(
        "DNS",
        "record update < 5 ms",
        format!(
            "p50 {}, p99 {}",
            fmt_opt(update, 0, " µs"),
            fmt_opt(dns["update_us"]["p99"].as_f64(), 0, " µs")
        ),
        update.map(|u| u < 5000.0),
        "the tail is time spent waiting for a CPU",
    );
    samples_plot(
        r,
        args,
        "dns",
        "DNS record update: endpoint added -> answerable",
        "µs (sorted samples)",
        vec![("Pier".to_owned(), samples_of(&dns["update_us"]["all"]))],
    )?;
    r.md.push_str(&notes(&args.notes, "dns"));
    Ok(())
}

/// One figure (`key`: qps, cpu_us) of `who`'s max-QPS rounds.
fn dns_rounds(dns: &Value, who: &str, key: &str) -> Vec<f64> {
    dns["max_qps_rounds"][who]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r[key].as_f64()).collect())
        .unwrap_or_default()
}

/// Pier's QPS / aardvark-dns's, median of the rounds (each round runs both back to back).
fn dns_qps_ratio(dns: &Value) -> Option<f64> {
    median_of(
        dns["qps_ratio_per_round"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
    )
}

/// aardvark-dns's server CPU per answer / Pier's (medians over the rounds).
fn dns_cpu_ratio(dns: &Value) -> Option<f64> {
    match (
        median_of(dns_rounds(dns, "aardvark-dns", "cpu_us")),
        median_of(dns_rounds(dns, "pier", "cpu_us")),
    ) {
        (Some(theirs), Some(ours)) if ours > 0.0 => Some(theirs / ours),
        _ => None,
    }
}

fn apiserver(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## API server\n")?;
    let Some(api) = read_json(&args.results.join("apiserver.json")) else {
        writeln!(r.md, "Not measured in this run (suite `apiserver`).")?;
        r.not_run(
            "API server",
            &[
                "create >= 2,000 writes/s",
                "watch fan-out < 5 ms (p99, 100 watchers)",
            ],
            "suite `apiserver` not run",
        );
        return Ok(());
    };
    r.section_run(args, "apiserver");
    let n = api["objects"].as_u64().unwrap_or(0);
    writeln!(
        r.md,
        "Command: `WATCHERS=10 cargo run --release -p pier-apiserver --example bench -- {n}` \
         (`apiserver/examples/bench.rs`): the embedded API server with a durable store (WAL, group-commit \
         fsync) in a temporary directory, driven in-process through the `tower::Service` that \
         `kube::Client` uses, Pier's CRDs installed; every create is validated (schema, CEL), tracked \
         (managed fields) and acknowledged once fsynced.\n"
    )?;
    let c = &api["create_concurrent"];
    let w = &api["watch_fanout"];
    let s = &api["watch_during_storm"];
    writeln!(r.md, "| measurement | figure |\n|---|---|")?;
    writeln!(
        r.md,
        "| create, {} concurrent clients, {n} objects | {:.0} writes/s; p50 {:.1} ms, p99 {:.1} ms |",
        c["clients"],
        c["writes_per_s"].as_f64().unwrap_or(f64::NAN),
        c["p50_ms"].as_f64().unwrap_or(f64::NAN),
        c["p99_ms"].as_f64().unwrap_or(f64::NAN)
    )?;
    writeln!(
        r.md,
        "| create, one client, sequential | p50 {:.2} ms, p99 {:.2} ms |",
        api["create_sequential"]["p50_ms"]
            .as_f64()
            .unwrap_or(f64::NAN),
        api["create_sequential"]["p99_ms"]
            .as_f64()
            .unwrap_or(f64::NAN)
    )?;
    writeln!(
        r.md,
        "| watch fan-out: {} watchers, one create every {} ms, {} creates | {} of {} events; create call -> receipt p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        w["watchers"],
        w["pace_ms"],
        w["creates"],
        w["received"],
        w["expected"],
        w["p50_ms"].as_f64().unwrap_or(f64::NAN),
        w["p99_ms"].as_f64().unwrap_or(f64::NAN),
        w["max_ms"].as_f64().unwrap_or(f64::NAN)
    )?;
    writeln!(
        r.md,
        "| watch during the create storm: {} watchers | {} of {} events; p50 {:.1} ms, p99 {:.1} ms |",
        s["watchers"],
        s["received"],
        s["expected"],
        s["p50_ms"].as_f64().unwrap_or(f64::NAN),
        s["p99_ms"].as_f64().unwrap_or(f64::NAN)
    )?;
    writeln!(
        r.md,
        "| get, sequential | {:.0} gets/s; p50 {:.3} ms, p99 {:.3} ms |",
        api["get"]["gets_per_s"].as_f64().unwrap_or(f64::NAN),
        api["get"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
        api["get"]["p99_ms"].as_f64().unwrap_or(f64::NAN)
    )?;
    writeln!(
        r.md,
        "| list all / with a label selector | {:.0} ms / {:.0} ms |",
        api["list_all_ms"].as_f64().unwrap_or(f64::NAN),
        api["list_selector_ms"].as_f64().unwrap_or(f64::NAN)
    )?;
    writeln!(
        r.md,
        "| memory (RSS of server + benchmark client) | {:.0} MiB at {} objects ({:.0} MiB at start) |",
        api["memory"]["rss_mib"].as_f64().unwrap_or(f64::NAN),
        api["memory"]["objects"],
        api["memory"]["rss_start_mib"].as_f64().unwrap_or(f64::NAN)
    )?;
    let writes = c["writes_per_s"].as_f64();
    let fan_p99 = w["p99_ms"].as_f64();
    let all_delivered = w["received"] == w["expected"];
    r.verdict_header();
    r.target(
        "API server",
        "create >= 2,000 writes/s",
        fmt_opt(writes, 0, " writes/s"),
        writes.map(|x| x >= 2000.0),
        "each write waits for its group's fdatasync on the machine's shared disk, and validation \
         runs on the 2 shared CPUs",
    );
    r.target(
        "API server",
        "watch fan-out < 5 ms (p99, 100 watchers)",
        format!(
            "p99 {}{}",
            fmt_opt(fan_p99, 2, " ms"),
            if all_delivered {
                ""
            } else {
                " (events missing)"
            }
        ),
        fan_p99.map(|p| p < 5.0 && all_delivered),
        "the figure includes the create's own fsync; the tail is CPU contention",
    );
    r.md.push_str(&notes(&args.notes, "apiserver"));
    Ok(())
}

fn operator(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## Operator\n")?;
    let Some(op) = read_json(&args.results.join("operator.json")) else {
        writeln!(r.md, "Not measured in this run (suite `operator`).")?;
        r.not_run(
            "operator",
            &[
                "Endpoint created -> address in status p50 < 20 ms",
                "1,000 Endpoints allocated < 5 s",
            ],
            "suite `operator` not run",
        );
        return Ok(());
    };
    r.section_run(args, "operator");
    writeln!(
        r.md,
        "Command: `cargo bench -p pier-operator --bench controllers` (`operator/benches/controllers.rs`): \
         the operator on the embedded API server in one process; \"address in status\" is when a \
         separate watch first sees `status.ipv4Address` (create, finalizer, allocation and the status \
         write by server-side apply, each through a watch event).\n"
    )?;
    let l = &op["created_to_address_ms"];
    writeln!(r.md, "| measurement | figure |\n|---|---|")?;
    writeln!(
        r.md,
        "| Endpoint created -> address in status, {} one at a time | p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        op["sequential"],
        l["p50"].as_f64().unwrap_or(f64::NAN),
        l["p90"].as_f64().unwrap_or(f64::NAN),
        l["p99"].as_f64().unwrap_or(f64::NAN),
        l["max"].as_f64().unwrap_or(f64::NAN)
    )?;
    let bulk = op["bulk_allocated_s"].as_f64();
    writeln!(
        r.md,
        "| {} Endpoints created concurrently (64 in flight) | all created in {:.2} s, all allocated in {:.2} s |",
        op["bulk"],
        op["bulk_created_s"].as_f64().unwrap_or(f64::NAN),
        bulk.unwrap_or(f64::NAN)
    )?;
    let p50 = l["p50"].as_f64();
    r.verdict_header();
    r.target(
        "operator",
        "Endpoint created -> address in status p50 < 20 ms",
        fmt_opt(p50, 1, " ms"),
        p50.map(|p| p < 20.0),
        "three watch round trips and two fsynced writes per Endpoint on the shared machine",
    );
    r.target(
        "operator",
        "1,000 Endpoints allocated < 5 s",
        fmt_opt(bulk, 2, " s"),
        bulk.map(|b| b < 5.0),
        "the creates themselves and every status write are fsynced on the shared disk",
    );
    samples_plot(
        r,
        args,
        "operator",
        "Endpoint created -> address in status",
        "ms (sorted samples)",
        vec![(
            "Pier operator".to_owned(),
            samples_of(&op["created_to_address_ms"]),
        )],
    )?;
    r.md.push_str(&notes(&args.notes, "operator"));
    Ok(())
}

fn local(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## Local mode, `pier up`\n")?;
    let Some(local) = read_json(&args.results.join("local.json")) else {
        writeln!(r.md, "Not measured in this run (suite `local`).")?;
        r.not_run(
            "local mode",
            &[
                "apply -> ping < 100 ms median",
                "500 Endpoints applied at once reachable < 10 s",
            ],
            "suite `local` not run",
        );
        r.md.push_str(&notes(&args.notes, "local"));
        return Ok(());
    };
    r.section_run(args, "local");
    let c = &local["commands"];
    // Shown inside inline code: no backticks of their own.
    let s = |v: &Value| v.as_str().unwrap_or("?").replace('`', "");
    writeln!(
        r.md,
        "Command: `PIER_BENCH_RUNS={} PIER_BENCH_SCALE={} benches/local.sh` (run by `benches/run.sh`). \
         It starts `{}` in a node namespace of its own (nothing touches the machine's), waits for its \
         `ready` line, creates a Network with a subnet of its choice and one anchor Endpoint, then talks \
         to the API server over HTTPS with the kubeconfig's CA and token. Every Endpoint has a static \
         `spec.ipv4Address`, so the clock covers the operator's allocation, the node agent's attach and \
         the status writes, and ping can start before the apply.\n",
        local["runs"],
        local["at_once"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x["endpoints"].to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        s(&c["pier_up"])
    )?;
    writeln!(
        r.md,
        "- apply -> ping: `{}` runs in the node namespace from before the apply; the clock starts \
         when `{}` (server-side apply of one Endpoint, one request) sends it (curl's start plus its \
         `time_pretransfer`: connection and TLS handshake done; curl's clock starts after its own \
         initialisation, so this is if anything early and the figure if anything high) and stops at \
         the first echo reply's timestamp (`ping -D`). The bridge's ARP probe interval is set to 1 ms \
         for this, so an unanswered ARP does not add the kernel's default 1 s retry (see the script). \
         The same with `{}` (process start, discovery, GET + POST) is the last row.",
        s(&c["ping"]),
        s(&c["apply"]),
        s(&c["kubectl"])
    )?;
    writeln!(
        r.md,
        "- N at once: `{}`, while `{}` rounds over the addresses not answering yet run until all \
         answer; the clock starts when the requests start.",
        s(&c["at_once_apply"]),
        s(&c["at_once_probe"])
    )?;
    writeln!(
        r.md,
        "- Memory: `{}` (VmRSS: resident now; VmHWM: peak so far).\n",
        s(&c["rss"])
    )?;
    writeln!(
        r.md,
        "| measurement ({} runs) | median | min | max |\n|---|---:|---:|---:|",
        local["runs"]
    )?;
    for (label, key) in [
        ("apply request sent -> ping answered", "apply_to_ping_ms"),
        (
            "of which: request sent -> acknowledged (server-side apply, fsynced)",
            "apply_request_ms",
        ),
        (
            "curl started (process, new TLS connection) -> ping answered",
            "curl_start_to_ping_ms",
        ),
        (
            "`kubectl apply` started -> ping answered",
            "kubectl_apply_to_ping_ms",
        ),
        (
            "of which: the `kubectl apply` process, start to exit",
            "kubectl_process_ms",
        ),
    ] {
        let v = &local[key];
        if v.is_null() {
            continue;
        }
        writeln!(
            r.md,
            "| {label} | {:.1} ms | {:.1} ms | {:.1} ms |",
            v["median"].as_f64().unwrap_or(f64::NAN),
            v["min"].as_f64().unwrap_or(f64::NAN),
            v["max"].as_f64().unwrap_or(f64::NAN)
        )?;
    }
    if local["failures"].as_u64().unwrap_or(0) > 0 {
        writeln!(
            r.md,
            "\n{} runs did not answer ping within 5 s and are not in the figures.",
            local["failures"]
        )?;
    }
    let at_once = local["at_once"].as_array().cloned().unwrap_or_default();
    writeln!(
        r.md,
        "\n| Endpoints applied at once | all answer ping | all apply requests done | ping rounds (last one) | not answering at the end | pier up CPU meanwhile | machine CPUs busy | ARP table full (times) | delete all -> all gone |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for row in &at_once {
        writeln!(
            r.md,
            "| {} | {} | {} | {} ({:.0} ms) | {} | {} | {} | {} | {} |",
            row["endpoints"],
            fmt_opt(row["all_reachable_s"].as_f64(), 2, " s"),
            fmt_opt(row["requests_done_s"].as_f64(), 2, " s"),
            row["ping_rounds"],
            row["last_round_ms"].as_f64().unwrap_or(f64::NAN),
            row["not_reachable"],
            match (
                row["cpu"]["pier_up_cpu_s"].as_f64(),
                row["cpu"]["pier_up_cpus"].as_f64()
            ) {
                (Some(s), Some(c)) => format!("{s:.1} CPU-s ({c:.2} of the CPUs)"),
                _ => "-".to_owned(),
            },
            fmt_opt(
                row["cpu"]["machine_busy"].as_f64().map(|b| b * 100.0),
                0,
                "%"
            ),
            row["arp_table_full_events"]
                .as_u64()
                .map_or("-".to_owned(), |n| n.to_string()),
            fmt_opt(row["delete_all_s"].as_f64(), 2, " s")
        )?;
    }
    writeln!(
        r.md,
        "\n| `pier up` memory | VmRSS | VmHWM (peak so far) |\n|---|---:|---:|"
    )?;
    for row in local["rss"].as_array().into_iter().flatten() {
        writeln!(
            r.md,
            "| {} endpoints attached | {:.1} MiB | {:.1} MiB |",
            row["endpoints"],
            row["vmrss_mib"].as_f64().unwrap_or(f64::NAN),
            row["vmhwm_mib"].as_f64().unwrap_or(f64::NAN)
        )?;
    }
    if let Some(end) = local["rss_after_delete"].as_object() {
        writeln!(
            r.md,
            "| all deleted again (end of the run) | {:.1} MiB | {:.1} MiB |",
            end.get("vmrss_mib")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN),
            end.get("vmhwm_mib")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN)
        )?;
    }
    let median = local["apply_to_ping_ms"]["median"].as_f64();
    let five_hundred = at_once
        .iter()
        .find(|r| r["endpoints"].as_u64() == Some(500));
    r.verdict_header();
    r.target(
        "local mode",
        "apply -> ping < 100 ms median",
        format!(
            "{} (kubectl apply: {})",
            fmt_opt(median, 1, " ms"),
            fmt_opt(
                local["kubectl_apply_to_ping_ms"]["median"].as_f64(),
                1,
                " ms"
            )
        ),
        median.map(|m| m < 100.0),
        "see the notes of the local-mode section",
    );
    match five_hundred {
        Some(row) => {
            let all = row["all_reachable_s"].as_f64();
            r.target(
                "local mode",
                "500 Endpoints applied at once reachable < 10 s",
                fmt_opt(all, 2, " s"),
                Some(all.is_some_and(|a| a < 10.0)),
                &limit_500(row),
            );
        }
        None => {
            let largest = at_once.last();
            r.target(
                "local mode",
                "500 Endpoints applied at once reachable < 10 s",
                largest.map_or("not measured".to_owned(), |row| {
                    format!(
                        "not measured at 500 in this mode ({} at once: {})",
                        row["endpoints"],
                        fmt_opt(row["all_reachable_s"].as_f64(), 2, " s")
                    )
                }),
                None,
                "",
            );
        }
    }
    samples_plot(
        r,
        args,
        "local",
        "pier up: apply -> ping, every run",
        "ms",
        vec![
            (
                "apply request -> ping".to_owned(),
                samples_of(&local["apply_to_ping_ms"]),
            ),
            (
                "kubectl apply -> ping".to_owned(),
                samples_of(&local["kubectl_apply_to_ping_ms"]),
            ),
        ],
    )?;
    r.md.push_str(&notes(&args.notes, "local"));
    Ok(())
}

/// What limits the 500-at-once figure, from what the run recorded.
fn limit_500(row: &Value) -> String {
    let fulls = row["arp_table_full_events"].as_u64().unwrap_or(0);
    let cpu = format!(
        "the machine's CPUs were {} busy meanwhile and pier up used {} of CPU per Endpoint \
         (see the local-mode notes)",
        fmt_opt(
            row["cpu"]["machine_busy"].as_f64().map(|b| b * 100.0),
            0,
            "%"
        ),
        fmt_opt(
            row["cpu"]["pier_up_cpu_s"]
                .as_f64()
                .map(|c| c * 1000.0 / 500.0),
            0,
            " ms"
        )
    );
    if fulls > 0 {
        format!(
            "the kernel's neighbour (ARP) table, one for all namespaces with at most {} entries \
             (`gc_thresh3`), was full {fulls} times during the phase: 500 endpoints need about 1000 \
             entries, and while it is full some attached endpoints cannot be reached until \
             garbage collection frees old entries; also, {cpu}",
            row["arp_gc_thresh3"]
        )
    } else {
        format!("CPU: {cpu}")
    }
}

fn summary(targets: &[Target]) -> String {
    let mut md = String::from(
        "## Targets\n\nEvery target, as its section measured it (details and provenance in the sections below).\n\n\
         | area | target | measured | verdict | what limits it (when not met) |\n|---|---|---|---|---|\n",
    );
    for t in targets {
        let limit = if t.met == Some(false) {
            t.limit.as_str()
        } else {
            ""
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {limit} |",
            t.area, t.target, t.measured, t.verdict
        );
    }
    md
}

/// The areas whose first target is a headline in the README, in this order.
const HEADLINE_AREAS: [&str; 5] = ["attach", "DNS", "local mode", "overlay", "API server"];
const SUMMARY_BEGIN: &str = "<!-- benchmarks-summary:begin -->";
const SUMMARY_END: &str = "<!-- benchmarks-summary:end -->";

/// Replaces the summary block of `readme` with the headline targets.
fn write_readme_summary(readme: &Path, targets: &[Target], run: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let (Some(begin), Some(end)) = (text.find(SUMMARY_BEGIN), text.find(SUMMARY_END)) else {
        bail!(
            "{} has no {SUMMARY_BEGIN} ... {SUMMARY_END} block",
            readme.display()
        );
    };
    let mut table =
        format!("{SUMMARY_BEGIN}\n| area | target | measured | verdict |\n|---|---|---|---|\n");
    for area in HEADLINE_AREAS {
        if let Some(t) = targets.iter().find(|t| t.area == area) {
            writeln!(
                table,
                "| {} | {} | {} | {} |",
                t.area, t.target, t.measured, t.verdict
            )?;
        }
    }
    writeln!(
        table,
        "\n_From `BENCHMARKS.md` ({run}); every other target and how each was measured are there._"
    )?;
    let updated = format!("{}{table}{}", &text[..begin], &text[end..]);
    std::fs::write(readme, updated).with_context(|| format!("writing {}", readme.display()))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let mut r = Report {
        md: String::new(),
        targets: Vec::new(),
        section: None,
        results: args.results.clone(),
        fingerprint: args.fingerprint.clone(),
    };
    ipam(&mut r, &args)?;
    attach(&mut r, &args)?;
    ports(&mut r, &args)?;
    dns(&mut r, &args)?;
    apiserver(&mut r, &args)?;
    fanout::fanout(&mut r, &args)?;
    operator(&mut r, &args)?;
    local(&mut r, &args)?;
    incremental::incremental(&mut r, &args)?;
    docker::docker(&mut r, &args)?;
    overlay::overlay(&mut r, &args)?;
    memory::memory(&mut r, &args)?;
    teardown::teardown(&mut r, &args)?;

    let rev = version_of("git", &["describe", "--always", "--dirty"]);
    let mut head = String::new();
    writeln!(head, "# Benchmarks\n")?;
    writeln!(
        head,
        "Generated by `{}` ({} mode) at {} (suites run this time: {}); nothing is edited by hand (the notes come \
         from `benches/notes/`, the text from `benches/driver/`). Each section starts with the run that measured it \
         (date, command, mode, load, git revision and code fingerprint, from `benches/fingerprint.sh`); its raw \
         samples are in `benches/report/json/` (the latest run of each suite) and `benches/report/json/runs/` \
         (every kept run). Verdicts are given only for sections measured on the code this report is about \
         (fingerprint `{}`); the others say they are stale. The targets whose figure moves between runs of the same \
         code (attach flatness, dual-stack and iperf3 ratios, DNS, memory after deleting, teardown) are judged by \
         their median over every kept run of the same code and mode, never by the best or the last one, and their \
         row says so when more than one run went into it; a median within {:.0}% of its target is borderline and \
         is judged only once there are {} runs. The other targets are judged on the run that measured them. \
         Run it yourself, as root: `sudo benches/run.sh --quick` (under about 2 minutes once built: \
         smaller N, fewer repetitions, so the targets at 1000 / 500 are not judged) or \
         `sudo benches/run.sh --full`; `PIER_BENCH_SUITES=\"ipam attach ports dns apiserver operator local overlay\"` \
         picks suites. Needs netavark, aardvark-dns, dnsperf, iperf3, fping, socat, nsenter and kubectl.\n",
        args.command,
        args.mode,
        if args.run_id.is_empty() {
            version_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        } else {
            args.run_id.clone()
        },
        args.suites
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(", "),
        args.fingerprint,
        runs::BORDERLINE * 100.0,
        runs::RUNS_TO_JUDGE,
    )?;
    writeln!(head, "- Machine: {}", machine())?;
    writeln!(head, "- Load during the run: {}", args.load)?;
    writeln!(
        head,
        "- pier git rev: {rev} (code fingerprint {}); {}",
        args.fingerprint,
        version_of("rustc", &["--version"])
    )?;
    writeln!(
        head,
        "- Peers and tools: netavark {}; aardvark-dns {}; dnsperf {}; {}; fping {}; kubectl {}\n",
        deb_version("netavark"),
        deb_version("aardvark-dns"),
        deb_version("dnsperf"),
        version_of("iperf3", &["--version"]),
        deb_version("fping"),
        version_of("kubectl", &["version", "--client"])
    )?;
    let body = format!("{head}{}\n{}", summary(&r.targets), r.md);

    let benchmarks = args
        .benchmarks
        .clone()
        .unwrap_or_else(|| args.out.join("BENCHMARKS.md"));
    std::fs::write(&benchmarks, body.replace(IMG, &args.image_prefix))
        .with_context(|| format!("writing {}", benchmarks.display()))?;
    if let Some(readme) = &args.readme {
        write_readme_summary(readme, &r.targets, &args.run_id)?;
    }
    let index = args.out.join("README.md");
    std::fs::write(
        &index,
        format!(
            "# Benchmark report files\n\nThe report is `{}` (generated by `{}` with everything in this folder). \
             This folder holds its plots (SVG) and, in `json/`, what each suite wrote.\n",
            benchmarks.display(),
            args.command
        ),
    )
    .with_context(|| format!("writing {}", index.display()))?;
    println!("report: {}", benchmarks.display());
    Ok(())
}
