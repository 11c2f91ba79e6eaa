//! The `teardown` section: N Endpoints attached through `pier up`, then deleted at once
//! (benches/teardown.sh), timed until no veth of theirs is left on the node; every round's
//! figures, the target of issue 19 and a plot of the veths left over time.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::chart::{self, Frame};
use crate::runs::Threshold;
use crate::{Args, IMG, Report, fmt_opt, median_of, notes, read_json};

/// The target, as the summary lists it.
const TARGET: &str = "500 Endpoints deleted at once: no veth left on the node < 3 s";
/// The Endpoints a round must have for the target to be judged.
const JUDGED_AT: u64 = 500;
/// The target's limit in seconds.
const LIMIT_S: f64 = 3.0;

/// The figure judged: the slowest round's seconds to no veth left (each way of deleting must
/// meet the target), at 500 Endpoints only.
pub fn slowest(results: &Value) -> Option<f64> {
    if results["endpoints"].as_u64() != Some(JUDGED_AT) {
        return None;
    }
    let rounds = results["rounds"].as_array()?;
    seconds(rounds, None, "no_veth_left_s")
        .into_iter()
        .reduce(f64::max)
}

fn seconds(rounds: &[Value], how: Option<&str>, key: &str) -> Vec<f64> {
    rounds
        .iter()
        .filter(|r| how.is_none_or(|h| r["how"].as_str() == Some(h)))
        .filter_map(|r| r[key].as_f64())
        .collect()
}

/// The veths left after each poll of a round, as (seconds, veths).
fn progress(round: &Value) -> Vec<(f64, f64)> {
    round["veths_left"]
        .as_array()
        .map(|points| {
            points
                .iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn plot_progress(path: &Path, rounds: &[Value]) -> Result<bool> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = rounds
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let label = format!("round {} ({})", i + 1, r["how"].as_str().unwrap_or("?"));
            (label, progress(r))
        })
        .filter(|(_, points)| !points.is_empty())
        .collect();
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let (x_max, y_max) = points.fold((0.0_f64, 0.0_f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    if lines.is_empty() {
        return Ok(false);
    }
    let frame = Frame::new(
        "Endpoints deleted at once: the node's veths left",
        "seconds since the delete started",
        "veths left on the node",
    );
    let x = 0.0..(x_max * 1.05).max(LIMIT_S * 1.1);
    let y_top = y_max.max(1.0);
    chart::draw(path, frame, x, 0.0..y_top * 1.05, |c| {
        for (i, (label, points)) in lines.iter().enumerate() {
            chart::line(c, points.iter().copied(), chart::color(i), label.clone())?;
        }
        chart::target_line(c, (LIMIT_S, 0.0), (LIMIT_S, y_top), "target: 3 s")
    })?;
    Ok(true)
}

/// The section: how it was measured, every round, the verdict and the plot.
pub fn teardown(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## Bulk teardown: Endpoints deleted at once\n")?;
    let Some(t) = read_json(&args.results.join("teardown.json")) else {
        writeln!(r.md, "Not measured in this run (suite `teardown`).")?;
        r.not_run("teardown", &[TARGET], "suite `teardown` not run");
        r.md.push_str(&notes(&args.notes, "teardown"));
        return Ok(());
    };
    r.section_run(args, "teardown");
    let c = &t["commands"];
    let s = |v: &Value| v.as_str().unwrap_or("?").replace('`', "");
    let endpoints = t["endpoints"].as_u64().unwrap_or(0);
    writeln!(
        r.md,
        "Command: `PIER_BENCH_TEARDOWN_SIZE={endpoints} PIER_BENCH_TEARDOWN_RUNS={} benches/teardown.sh` \
         (run by `benches/run.sh`). It starts `{}` in a node namespace of its own (no full reconcile, \
         which would also collect the veths of deleted Endpoints, falls into a round: the figures are \
         the detach path's), creates one Network, \
         then in each round {endpoints} Endpoints ({}), waits until all are `Attached`, and deletes them \
         at once, alternating two ways: `{}` (one request) and `{}` (what a user types: kubectl sends \
         one DELETE per Endpoint). The clock starts with the request (or kubectl) and stops when \
         `{}` shows none (polled every {} s, so each figure over-counts by at most one poll), when \
         their named namespaces are gone, and when the API has none of them left (every finalizer \
         done: the node's after the veth, then the operator's release of the address). Last, \
         {endpoints} Endpoints attached once more, `pier up` stopped and `{}` timed.\n",
        t["runs_per_way"],
        s(&c["pier_up"]),
        s(&c["create"]),
        s(&c["collection"]),
        s(&c["kubectl"]),
        s(&c["veths"]),
        t["poll_s"],
        s(&c["pier_down"]),
    )?;
    let rounds = t["rounds"].as_array().cloned().unwrap_or_default();
    writeln!(
        r.md,
        "| round | deleted by | Endpoints | no veth left | no namespace left | API empty | delete command done | pier up CPU | machine CPUs busy (load average at the end) |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---|"
    )?;
    for (i, round) in rounds.iter().enumerate() {
        writeln!(
            r.md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
            i + 1,
            round["how"].as_str().unwrap_or("?"),
            round["endpoints"],
            fmt_opt(round["no_veth_left_s"].as_f64(), 2, " s"),
            fmt_opt(round["no_netns_left_s"].as_f64(), 2, " s"),
            fmt_opt(round["api_empty_s"].as_f64(), 2, " s"),
            fmt_opt(round["delete_command_s"].as_f64(), 2, " s"),
            fmt_opt(round["pier_up_cpu_s"].as_f64(), 2, " CPU-s"),
            fmt_opt(round["machine_busy"].as_f64().map(|b| b * 100.0), 0, "%"),
            round["loadavg_at_end"].as_str().unwrap_or("-"),
        )?;
    }
    writeln!(
        r.md,
        "\n`pier down` with {endpoints} Endpoints attached: {} (links and table, then the namespaces Pier created).",
        fmt_opt(t["pier_down_s"].as_f64(), 2, " s")
    )?;
    let all = seconds(&rounds, None, "no_veth_left_s");
    let median = |how: &str| median_of(seconds(&rounds, Some(how), "no_veth_left_s"));
    let measured = format!(
        "slowest round {}; medians: one request {}, kubectl {}",
        fmt_opt(all.iter().copied().reduce(f64::max), 2, " s"),
        fmt_opt(median("collection"), 2, " s"),
        fmt_opt(median("kubectl"), 2, " s"),
    );
    let measured = if endpoints == JUDGED_AT {
        measured
    } else {
        format!("{measured} at {endpoints} Endpoints (judged at {JUDGED_AT} only)")
    };
    r.verdict_header();
    r.judged(
        "teardown",
        TARGET,
        measured,
        (slowest(&t), Threshold::AtMost(LIMIT_S)),
        slowest,
        "see the rounds above: the slowest round decides",
    );
    let plot = args.out.join("teardown.svg");
    // Linked only when this run drew it (a file left by an earlier run is not this run's).
    if plot_progress(&plot, &rounds)? {
        writeln!(r.md, "\n![veths left after the delete]({IMG}teardown.svg)")?;
    }
    r.md.push_str(&notes(&args.notes, "teardown"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judged_at_500_only_on_the_slowest_round() {
        let results = |n: u64, rounds: &[f64]| {
            let rounds: Vec<Value> = rounds
                .iter()
                .map(|s| serde_json::json!({"how": "kubectl", "no_veth_left_s": s}))
                .collect();
            serde_json::json!({"endpoints": n, "rounds": rounds})
        };
        assert_eq!(slowest(&results(500, &[0.8, 1.2])), Some(1.2));
        assert_eq!(slowest(&results(500, &[3.1, 0.8])), Some(3.1));
        assert_eq!(slowest(&results(100, &[0.3])), None);
        assert_eq!(slowest(&results(500, &[])), None);
        assert_eq!(slowest(&serde_json::json!({})), None);
    }

    #[test]
    fn progress_reads_the_polls() {
        let round = serde_json::json!({"veths_left": [[0.02, 500], [0.5, 12], [0.6, 0]]});
        assert_eq!(
            progress(&round),
            vec![(0.02, 500.0), (0.5, 12.0), (0.6, 0.0)]
        );
        assert!(progress(&serde_json::json!({})).is_empty());
    }
}
