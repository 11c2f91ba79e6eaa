//! The `overlay` section: three nodes joined by an underlay (benches/overlay.sh), the targets of
//! issue 16 and a CDF of the create -> ping latencies.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use serde_json::Value;

use crate::{Args, IMG, Report, fmt_opt, gbps_list, median_of, notes, read_json};

/// The targets, as the summary lists them.
const P50_TARGET: &str = "create on node A -> ping from node B: p50 < 100 ms";
const P99_TARGET: &str = "create on node A -> ping from node B: p99 < 500 ms";
const AT_ONCE_TARGET: &str =
    "3 nodes x 300 Endpoints at once: every pair of nodes reachable < 15 s";
const IPERF_TARGET: &str =
    "iperf3 across nodes >= 90% of the two nodes directly on the underlay (same MTU)";
const CHURN_TARGET: &str =
    "entries per node after 1,000 creates/deletes: exactly the live remote endpoints";

/// The `q` quantile (0..=1) by nearest rank over the answered runs and the failed ones, a failed
/// run counting as slower than every answer (`None`: the quantile is a failure, or no runs).
pub fn quantile_with_failures(samples: &[f64], failures: usize, q: f64) -> Option<f64> {
    let total = samples.len() + failures;
    if total == 0 {
        return None;
    }
    // Nearest rank: the smallest value with at least q of the runs at or below it.
    let rank = ((q * total as f64).ceil() as usize).clamp(1, total);
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(rank - 1).copied()
}

/// Points of the empirical CDF: (latency, share of all runs answered by then), failures never
/// reaching 1.
pub fn cdf_points(samples: &[f64], failures: usize) -> Vec<(f64, f64)> {
    let total = (samples.len() + failures) as f64;
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .iter()
        .enumerate()
        .map(|(i, &ms)| (ms, (i + 1) as f64 / total))
        .collect()
}

/// Two paths' medians and the ratio of the first to the second.
pub type Ratio = (f64, f64, f64);

/// The median of each path and the ratio of the medians (overlay / direct).
pub fn throughput_ratio(overlay: &[f64], direct: &[f64]) -> Option<Ratio> {
    let o = median_of(overlay.to_vec())?;
    let d = median_of(direct.to_vec())?;
    (d > 0.0).then_some((o, d, o / d))
}

/// The ratio of a [`throughput_ratio`] as a percentage, or "not measured".
fn percent(ratio: Option<Ratio>) -> String {
    ratio.map_or("not measured".to_owned(), |(_, _, q)| {
        format!("{:.0}%", q * 100.0)
    })
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn plot_cdf(path: &Path, points: &[(f64, f64)]) -> Result<()> {
    let Some(x_max) = points.iter().map(|p| p.0).reduce(f64::max) else {
        return Ok(());
    };
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Overlay: Endpoint created on node A -> first ping from node B",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..(x_max * 1.1).max(1.0), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms from the request sent")
        .y_desc("share of runs answered")
        .draw()?;
    let color = Palette99::pick(0).to_rgba();
    // A step function: each run's answer raises the share at its latency.
    let mut steps = vec![(0.0, 0.0)];
    for &(x, y) in points {
        steps.push((x, steps.last().map_or(0.0, |p| p.1)));
        steps.push((x, y));
    }
    chart
        .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
        .label("Pier overlay")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    for (ms, label) in [(100.0, "p50 target"), (500.0, "p99 target")] {
        if ms <= x_max * 1.1 {
            chart
                .draw_series(LineSeries::new([(ms, 0.0), (ms, 1.0)], BLACK.mix(0.4)))?
                .label(label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

pub fn overlay(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## Overlay networks across nodes\n")?;
    let Some(o) = read_json(&args.results.join("overlay.json")) else {
        writeln!(r.md, "Not measured in this run (suite `overlay`).")?;
        r.not_run(
            "overlay",
            &[
                P50_TARGET,
                P99_TARGET,
                AT_ONCE_TARGET,
                IPERF_TARGET,
                CHURN_TARGET,
            ],
            "suite `overlay` not run",
        );
        r.md.push_str(&notes(&args.notes, "overlay"));
        return Ok(());
    };
    r.section_run(args, "overlay");
    let c = &o["commands"];
    let s = |v: &Value| v.as_str().unwrap_or("?").replace('`', "");
    let ping = &o["create_to_ping"];
    let at_once = &o["at_once"];
    let iperf = &o["iperf3"];
    let churn = &o["churn"];
    writeln!(
        r.md,
        "Command: `PIER_BENCH_RUNS={} PIER_BENCH_PER_NODE={} PIER_BENCH_CHURN={} PIER_BENCH_IPERF_ROUNDS={} \
         PIER_BENCH_IPERF_SECONDS={} benches/overlay.sh` (run by `benches/run.sh`). Fixture: {}. Node A runs `{}`; \
         nodes B and C run `{}`. One `driver: overlay` Network (VXLAN id {}, MTU {}), a prober Endpoint on each node.\n",
        ping["runs"],
        at_once["per_node"],
        churn["cycles"],
        iperf["rounds"],
        iperf["seconds"],
        s(&c["fixture"]),
        s(&c["pier_up"]),
        s(&c["pier_node"]),
        o["network"]["status"]["vxlanId"],
        o["network"]["status"]["mtu"]
    )?;
    writeln!(
        r.md,
        "- create -> ping: `{}` from before the create; the clock starts when `{}` is sent and stops at the first echo reply.\n\
         - at once: `{}`; meanwhile `{}` rounds, and every node's VXLAN neighbour table polled (`{}`) until it holds every remote endpoint.\n\
         - iperf3: `{}`.\n- churn: `{}`, then each node's entries compared with the API's live remote endpoints.\n",
        s(&c["ping"]),
        s(&c["create"]),
        s(&c["at_once_apply"]),
        s(&c["at_once_probe"]),
        s(&c["tables"]),
        s(&c["iperf3"]),
        s(&c["churn"])
    )?;
    let samples = numbers(&ping["samples_ms"]);
    let failures = ping["failures"].as_u64().unwrap_or(0) as usize;
    let p50 = quantile_with_failures(&samples, failures, 0.5);
    let p99 = quantile_with_failures(&samples, failures, 0.99);
    let shown = |q: Option<f64>| {
        if samples.len() + failures == 0 {
            "not measured".to_owned()
        } else {
            q.map_or("no answer within 5 s".to_owned(), |v| format!("{v:.1} ms"))
        }
    };
    writeln!(
        r.md,
        "| measurement | figure |\n|---|---|\n\
         | create -> ping ({} runs, {} without an answer in 5 s) | p50 {}, p99 {}, min {}, max {} |\n\
         | of which: the create request, sent -> acknowledged | median {} |",
        samples.len() + failures,
        failures,
        shown(p50),
        shown(p99),
        fmt_opt(samples.iter().copied().reduce(f64::min), 1, " ms"),
        fmt_opt(samples.iter().copied().reduce(f64::max), 1, " ms"),
        fmt_opt(median_of(numbers(&ping["apply_request_ms"])), 1, " ms"),
    )?;
    writeln!(
        r.md,
        "| {} Endpoints at once ({} per node) | every pair of nodes reachable {}: sampled pings ({} per node pair) {}, \
         every remote entry on every node {}; requests done {}; {} rounds (last {:.0} ms); ARP table full {} times; delete all {} |",
        at_once["endpoints"],
        at_once["per_node"],
        fmt_opt(at_once["all_reachable_s"].as_f64(), 2, " s"),
        at_once["sample_per_node_pair"],
        fmt_opt(at_once["sampled_pings_answered_s"].as_f64(), 2, " s"),
        fmt_opt(at_once["tables_complete_s"].as_f64(), 2, " s"),
        fmt_opt(at_once["requests_done_s"].as_f64(), 2, " s"),
        at_once["rounds"],
        at_once["last_round_ms"].as_f64().unwrap_or(f64::NAN),
        at_once["arp_table_full_events"],
        fmt_opt(at_once["delete_all_s"].as_f64(), 2, " s"),
    )?;
    let overlay_runs = numbers(&iperf["overlay_runs_gbps"]);
    let direct_runs = numbers(&iperf["direct_runs_gbps"]);
    let handmade_runs = numbers(&iperf["handmade_vxlan_runs_gbps"]);
    let ratio = throughput_ratio(&overlay_runs, &direct_runs);
    let kernel_ratio = throughput_ratio(&handmade_runs, &direct_runs);
    let pier_ratio = throughput_ratio(&overlay_runs, &handmade_runs);
    writeln!(
        r.md,
        "| iperf3 at MTU {} ({} s runs, alternating) | Pier's overlay {} Gbit/s, underlay direct {} Gbit/s, \
         hand-made kernel VXLAN (no Pier) {} Gbit/s |",
        iperf["mtu"],
        iperf["seconds"],
        gbps_list(&iperf["overlay_runs_gbps"]),
        gbps_list(&iperf["direct_runs_gbps"]),
        gbps_list(&iperf["handmade_vxlan_runs_gbps"])
    )?;
    writeln!(
        r.md,
        "| iperf3 ratios (medians) | Pier's overlay / direct {}; hand-made VXLAN / direct {}; Pier's overlay / hand-made VXLAN {} |",
        percent(ratio),
        percent(kernel_ratio),
        percent(pier_ratio)
    )?;
    let nodes = churn["nodes"].as_array().cloned().unwrap_or_default();
    for n in &nodes {
        writeln!(
            r.md,
            "| after churn, {} | {} FDB and {} neighbour entries for {} live remote endpoints (missing: {}; stale: {}) |",
            n["node"].as_str().unwrap_or("?"),
            n["fdb"],
            n["neigh"],
            n["expected"],
            entries(n, "missing"),
            entries(n, "stale"),
        )?;
    }
    writeln!(
        r.md,
        "| churn | {} cycles, {} kept; requests {}; API settled {}; tables exact {} after that; HTTP codes {} |",
        churn["cycles"],
        churn["survivors"],
        fmt_opt(churn["requests_s"].as_f64(), 2, " s"),
        fmt_opt(churn["api_settled_s"].as_f64(), 2, " s"),
        fmt_opt(churn["tables_exact_after_s"].as_f64(), 2, " s"),
        churn["http_codes"]
    )?;
    verdicts(r, &o, p50, p99, (ratio, kernel_ratio), &nodes)?;
    plot_cdf(
        &args.out.join("overlay.svg"),
        &cdf_points(&samples, failures),
    )?;
    writeln!(r.md, "\n![overlay create -> ping CDF]({IMG}overlay.svg)")?;
    r.md.push_str(&notes(&args.notes, "overlay"));
    Ok(())
}

/// "FDB a, neighbour b" of one node's missing or stale entries.
fn entries(node: &Value, kind: &str) -> String {
    let count = |key: String| node[key].as_array().map_or(0, Vec::len);
    format!(
        "FDB {}, neighbour {}",
        count(format!("{kind}_fdb")),
        count(format!("{kind}_neigh"))
    )
}

fn verdicts(
    r: &mut Report,
    o: &Value,
    p50: Option<f64>,
    p99: Option<f64>,
    (ratio, kernel_ratio): (Option<Ratio>, Option<Ratio>),
    nodes: &[Value],
) -> Result<()> {
    let ping = &o["create_to_ping"];
    let measured = ping["samples_ms"].as_array().is_some_and(|a| !a.is_empty())
        || ping["failures"].as_u64().unwrap_or(0) > 0;
    r.verdict_header();
    r.target(
        "overlay",
        P50_TARGET,
        fmt_opt(p50, 1, " ms"),
        measured.then(|| p50.is_some_and(|p| p < 100.0)),
        "see the overlay notes",
    );
    r.target(
        "overlay",
        P99_TARGET,
        fmt_opt(p99, 1, " ms"),
        measured.then(|| p99.is_some_and(|p| p < 500.0)),
        "see the overlay notes",
    );
    let at_once = &o["at_once"];
    let all = at_once["all_reachable_s"].as_f64();
    let per_node = at_once["per_node"].as_u64().unwrap_or(0);
    r.target(
        "overlay",
        AT_ONCE_TARGET,
        format!("{} at {per_node} per node", fmt_opt(all, 2, " s")),
        (per_node >= 300).then(|| all.is_some_and(|a| a < 15.0)),
        "see the overlay notes",
    );
    r.target(
        "overlay",
        IPERF_TARGET,
        ratio.map_or("not measured".to_owned(), |(ov, d, q)| {
            format!("{ov:.2} vs {d:.2} Gbit/s ({:.0}%, medians)", q * 100.0)
        }),
        ratio.map(|(_, _, q)| q >= 0.9),
        &format!(
            "the kernel's own VXLAN path, set up by hand without Pier on the same nodes, reaches {} \
             of direct in the same run: on veths every hop costs CPU (encapsulation, a second \
             bridge, decapsulation), shared by both iperf3 ends on 2 CPUs (see the overlay notes)",
            percent(kernel_ratio)
        ),
    );
    let cycles = o["churn"]["cycles"].as_u64().unwrap_or(0);
    let exact = !nodes.is_empty() && nodes.iter().all(|n| n["exact"].as_bool() == Some(true));
    r.target(
        "overlay",
        CHURN_TARGET,
        format!(
            "{} after {cycles} cycles",
            if exact {
                "exact on every node"
            } else {
                "not exact"
            }
        ),
        (cycles >= 1000).then_some(exact),
        "see the per-node rows: missing or stale entries",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile_with_failures(&samples, 0, 0.5), Some(50.0));
        assert_eq!(quantile_with_failures(&samples, 0, 0.99), Some(99.0));
        assert_eq!(quantile_with_failures(&[7.0, 3.0, 5.0], 0, 0.5), Some(5.0));
        assert_eq!(quantile_with_failures(&[], 0, 0.5), None);
    }

    #[test]
    fn failures_count_as_slower_than_every_answer() {
        let samples: Vec<f64> = (1..=98).map(f64::from).collect();
        // 2 of 100 runs failed: p99 falls on a failure, p50 does not move.
        assert_eq!(quantile_with_failures(&samples, 2, 0.99), None);
        assert_eq!(quantile_with_failures(&samples, 2, 0.5), Some(50.0));
        assert_eq!(quantile_with_failures(&[], 3, 0.5), None);
    }

    #[test]
    fn cdf_rises_to_the_answered_share() {
        let points = cdf_points(&[30.0, 10.0, 20.0], 1);
        assert_eq!(points, vec![(10.0, 0.25), (20.0, 0.5), (30.0, 0.75)]);
        assert!(cdf_points(&[], 2).is_empty());
    }

    #[test]
    fn throughput_ratio_of_medians() {
        let (o, d, q) = throughput_ratio(&[9.0, 8.0, 10.0], &[10.0, 12.0]).expect("both measured");
        assert_eq!((o, d), (9.0, 11.0));
        assert!((q - 9.0 / 11.0).abs() < 1e-12);
        assert_eq!(throughput_ratio(&[1.0], &[]), None);
        assert_eq!(throughput_ratio(&[1.0], &[0.0]), None);
    }
}
