//! The `incremental` section: many Endpoints applied at once through `pier up`, from the `local`
//! suite's N-at-once phases (benches/local.sh), every repetition's sample, the target of issue
//! 19 (2,000 reachable < 10 s) judged on the median of the repetitions, and a plot of how many
//! answered over time; before them, the node agent's state work alone (suite `state`,
//! node-daemon/benches/state.rs): a whole build per event, as before, against the incremental
//! state.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use serde_json::Value;

use crate::{Args, IMG, Report, fmt_opt, median_of, notes, read_json};

/// The target, as the summary lists it.
const TARGET: &str = "2,000 Endpoints applied at once reachable < 10 s";
/// How many at once the target is about, and in how many seconds.
const TARGET_N: u64 = 2000;
const TARGET_S: f64 = 10.0;

/// The seconds every repetition of one N took until all answered (`None`: not within the
/// bench's give-up time), from a row of `local.json`'s `at_once` (one sample when the row has
/// none listed: a JSON of before repetitions).
pub fn samples(row: &Value) -> Vec<Option<f64>> {
    match row["all_reachable_samples_s"].as_array() {
        Some(samples) => samples.iter().map(Value::as_f64).collect(),
        None => vec![row["all_reachable_s"].as_f64()],
    }
}

/// The median of the samples, a repetition that never got there counting as slower than all
/// others (`None`: the median run is one of those, or there are none). Of an even count, the
/// mean of the middle two.
pub fn median_reachable(samples: &[Option<f64>]) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().map(|s| s.unwrap_or(f64::INFINITY)).collect();
    sorted.sort_by(f64::total_cmp);
    let median = median_of(sorted)?;
    median.is_finite().then_some(median)
}

/// The verdict: met when the median repetition is under the target, not met otherwise.
pub fn verdict(samples: &[Option<f64>]) -> Option<bool> {
    if samples.is_empty() {
        return None;
    }
    Some(median_reachable(samples).is_some_and(|m| m < TARGET_S))
}

fn fmt_samples(samples: &[Option<f64>]) -> String {
    samples
        .iter()
        .map(|s| s.map_or("never".to_owned(), |s| format!("{s:.2}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per N: (N, points of (seconds since the apply, endpoints answering)).
type Curves = Vec<(u64, Vec<(f64, f64)>)>;

fn plot(path: &Path, curves: &Curves) -> Result<()> {
    let points = curves.iter().flat_map(|(_, c)| c.iter());
    let x_max = points.clone().map(|p| p.0).fold(TARGET_S, f64::max);
    let y_max = points.map(|p| p.1).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "pier up: N Endpoints applied at once -> answering ping",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the applies started")
        .y_desc("endpoints answering ping")
        .draw()?;
    for (i, (n, curve)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(curve.clone(), color.stroke_width(2)))?
            .label(format!("{n} at once (median repetition)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(LineSeries::new(
            [(TARGET_S, 0.0), (TARGET_S, y_max)],
            BLACK.mix(0.4),
        ))?
        .label("10 s target")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The progress of a row's (median) repetition: `[seconds, answering]` pairs.
fn curve(row: &Value) -> Vec<(f64, f64)> {
    let mut points = vec![(0.0, 0.0)];
    for point in row["answering_after_s"].as_array().into_iter().flatten() {
        if let (Some(s), Some(n)) = (point[0].as_f64(), point[1].as_f64()) {
            points.push((s, n));
        }
    }
    points
}

pub fn incremental(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(
        r.md,
        "\n## Many Endpoints at once (incremental node state)\n"
    )?;
    state_work(r, args)?;
    let local = read_json(&args.results.join("local.json"));
    let rows = local
        .as_ref()
        .and_then(|l| l["at_once"].as_array().cloned())
        .unwrap_or_default();
    if rows.is_empty() {
        writeln!(r.md, "Not measured in this run (suite `local`).")?;
        r.not_run("incremental", &[TARGET], "suite `local` not run");
        r.md.push_str(&notes(&args.notes, "incremental"));
        return Ok(());
    }
    r.section_run(args, "local");
    writeln!(
        r.md,
        "From the `local` suite's N-at-once phases (see that section for the commands): the clock \
         starts with the first of the parallel applies and stops at the end of the ping round in \
         which the last endpoint answered. Each N ran {} time(s); every sample is listed, the \
         figures are those of the median repetition.\n",
        local
            .as_ref()
            .map_or(Value::Null, |l| l["at_once_runs"].clone())
    )?;
    writeln!(
        r.md,
        "| at once | all answer ping: every repetition (s) | median | pier up CPU per endpoint | \
         machine CPUs busy | neighbour table limit (gc_thresh3) |\n|---:|---|---:|---:|---:|---:|"
    )?;
    let mut curves = Curves::new();
    for row in &rows {
        let n = row["endpoints"].as_u64().unwrap_or(0);
        let samples = samples(row);
        let cpu_ms = row["cpu"]["pier_up_cpu_s"]
            .as_f64()
            .map(|s| s * 1000.0 / n.max(1) as f64);
        writeln!(
            r.md,
            "| {n} | {} | {} | {} | {} | {} |",
            fmt_samples(&samples),
            fmt_opt(median_reachable(&samples), 2, " s"),
            fmt_opt(cpu_ms, 1, " ms"),
            fmt_opt(
                row["cpu"]["machine_busy"].as_f64().map(|b| b * 100.0),
                0,
                "%"
            ),
            row["arp_gc_thresh3"]
        )?;
        curves.push((n, curve(row)));
    }
    plot(&args.out.join("incremental.svg"), &curves)?;
    writeln!(
        r.md,
        "\n![N Endpoints applied at once: answering over time]({IMG}incremental.svg)"
    )?;
    r.verdict_header();
    match rows
        .iter()
        .find(|row| row["endpoints"].as_u64() == Some(TARGET_N))
    {
        Some(row) => {
            let samples = samples(row);
            r.target(
                "incremental",
                TARGET,
                format!(
                    "{} (median of {}: {})",
                    fmt_opt(median_reachable(&samples), 2, " s"),
                    samples.len(),
                    fmt_samples(&samples)
                ),
                verdict(&samples),
                "see the notes of this section",
            );
        }
        None => {
            let largest = rows.iter().max_by_key(|row| row["endpoints"].as_u64());
            r.target(
                "incremental",
                TARGET,
                largest.map_or("not measured".to_owned(), |row| {
                    format!(
                        "not measured at 2,000 in this mode ({} at once: {})",
                        row["endpoints"],
                        fmt_opt(median_reachable(&samples(row)), 2, " s")
                    )
                }),
                None,
                "",
            );
        }
    }
    r.md.push_str(&notes(&args.notes, "incremental"));
    Ok(())
}

/// The `state` suite's table and plot.
fn state_work(r: &mut Report, args: &Args) -> Result<()> {
    let Some(state) = read_json(&args.results.join("state.json")) else {
        writeln!(
            r.md,
            "The node agent's state work: not measured in this run (suite `state`).\n"
        )?;
        return Ok(());
    };
    r.section_run(args, "state");
    writeln!(
        r.md,
        "The node agent's state work alone, no kernel and no API server: `{}` ({} repetitions; {} \
         events per Endpoint, as the agent sees them in `pier up`). Before: every event built the \
         whole node and copied it for the apply; now the event updates the state for that \
         Endpoint and the apply gets its scope's projection.\n",
        state["command"].as_str().unwrap_or("?"),
        state["repetitions"],
        state["events_per_endpoint"]
    )?;
    writeln!(
        r.md,
        "| Endpoints at once | whole build per event (before): samples | median | incremental (now): samples | median |\n|---:|---|---:|---|---:|"
    )?;
    let mut points: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for row in state["sizes"].as_array().into_iter().flatten() {
        let n = row["endpoints"].as_f64().unwrap_or(0.0);
        let (full, now) = (&row["full_build_s"], &row["incremental_s"]);
        writeln!(
            r.md,
            "| {n} | {} | {} | {} | {} |",
            seconds_list(full),
            fmt_opt(full["median"].as_f64(), 3, " s"),
            seconds_list(now),
            fmt_opt(now["median"].as_f64(), 4, " s")
        )?;
        for (line, v) in points.iter_mut().zip([full, now]) {
            if let Some(s) = v["median"].as_f64() {
                line.push((n, s));
            }
        }
    }
    plot_state(&args.out.join("state.svg"), &points)?;
    writeln!(r.md, "\n![state work per N]({IMG}state.svg)\n")?;
    Ok(())
}

/// A bench's `samples` (seconds), as a list.
fn seconds_list(v: &Value) -> String {
    v["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|s| format!("{s:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn plot_state(path: &Path, lines: &[Vec<(f64, f64)>; 2]) -> Result<()> {
    let all = lines.iter().flatten();
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.map(|p| p.1).fold(0.001, f64::max);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Node agent: state work for N Endpoints at once",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("Endpoints applied at once")
        .y_desc("CPU seconds (one thread)")
        .draw()?;
    let labels = ["whole build per event (before)", "incremental (now)"];
    for (i, (line, label)) in lines.iter().zip(labels).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repetition_that_never_answered_counts_as_the_slowest() {
        assert_eq!(median_reachable(&[Some(3.0), None, Some(5.0)]), Some(5.0));
        assert_eq!(median_reachable(&[Some(3.0), None, None]), None);
        assert_eq!(median_reachable(&[Some(3.0), Some(4.0)]), Some(3.5));
        assert_eq!(verdict(&[Some(9.0), Some(11.0), Some(9.5)]), Some(true));
        assert_eq!(verdict(&[Some(9.0), None, Some(12.0)]), Some(false));
        assert_eq!(verdict(&[]), None);
    }

    #[test]
    fn rows_without_repetitions_are_one_sample() {
        let old = serde_json::json!({"endpoints": 500, "all_reachable_s": 4.68});
        assert_eq!(samples(&old), vec![Some(4.68)]);
        let new =
            serde_json::json!({"all_reachable_samples_s": [1.5, null], "all_reachable_s": 1.5});
        assert_eq!(samples(&new), vec![Some(1.5), None]);
    }
}
