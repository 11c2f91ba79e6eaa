//! The `watch fan-out under load` section (suite `apiserver`, `watch_fanout_load` in its JSON):
//! watchers over HTTPS while creates arrive at a steady rate, the issue 19 target, and a plot of
//! the delivery latency over the run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use serde_json::Value;

use crate::{Args, IMG, Report, fmt_opt, notes, read_json};

const TARGET: &str = "watch fan-out under load: p99 < 50 ms at 2,000 writes/s, 100 watchers";
/// The target's limit, ms.
const P99_LIMIT_MS: f64 = 50.0;
/// The load the target is judged at: writes/s asked for, and watchers.
const RATE: f64 = 2000.0;
const WATCHERS: u64 = 100;
/// The share of the asked rate the writes must reach (the pacing is per millisecond tick).
const RATE_REACHED: f64 = 0.95;

/// Whether the run met the target: `None` when it did not run at the target's load.
pub fn verdict(f: &Value) -> Option<bool> {
    let asked = f["target_writes_per_s"].as_f64()?;
    let watchers = f["watchers"].as_u64()?;
    if asked < RATE || watchers < WATCHERS {
        return None;
    }
    let reached = f["writes_per_s"].as_f64()? >= RATE * RATE_REACHED;
    let whole = f["received"] == f["expected"] && f["all_in_order"] == Value::Bool(true);
    Some(reached && whole && f["p99_ms"].as_f64()? < P99_LIMIT_MS)
}

/// One second of the run: (second, p50, p99, max).
type Second = (f64, f64, f64, f64);

fn per_second(f: &Value) -> Vec<Second> {
    f["per_second"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    Some((
                        r["second"].as_f64()?,
                        r["p50_ms"].as_f64()?,
                        r["p99_ms"].as_f64()?,
                        r["max_ms"].as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn plot_over_time(path: &Path, rows: &[Second]) -> Result<()> {
    let Some(y_max) = rows.iter().map(|r| r.3).reduce(f64::max) else {
        return Ok(());
    };
    let x_max = rows.iter().map(|r| r.0).fold(1.0, f64::max) + 1.0;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Watch fan-out under load: commit -> watcher receipt",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..(y_max.max(P99_LIMIT_MS) * 1.1))?;
    chart
        .configure_mesh()
        .x_desc("second of the run (by commit time)")
        .y_desc("ms")
        .draw()?;
    for (i, name) in ["p50", "p99", "max"].into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let y = |r: &Second| [r.1, r.2, r.3][i];
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|r| (r.0, y(r))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, P99_LIMIT_MS), (x_max, P99_LIMIT_MS)],
            BLACK.mix(0.4),
        ))?
        .label("p99 target")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn ms(v: &Value) -> String {
    fmt_opt(v.as_f64(), 2, " ms")
}

fn figures_table(r: &mut Report, f: &Value) -> Result<()> {
    writeln!(
        r.md,
        "| measurement | figure |\n|---|---|\n\
         | writes | {} creates asked at {:.0}/s, reached {}, {} clients |\n\
         | events delivered | {} of {} ({} of {} watchers got every write; in resourceVersion order: {}) |\n\
         | commit -> receipt | p50 {}, p90 {}, p99 {}, p99.9 {}, max {} |\n\
         | create call (queueing, validation, fsync), for comparison | p50 {}, p99 {} |\n\
         | CPU used by the process (server, writers, watchers' TLS) | {} cores; {} µs per delivery; {} commit groups/s |\n\
         | load average at the start / end of the phase | {} / {} |",
        f["writes"],
        f["target_writes_per_s"].as_f64().unwrap_or(f64::NAN),
        fmt_opt(f["writes_per_s"].as_f64(), 0, "/s"),
        f["write_clients"],
        f["received"],
        f["expected"],
        f["watchers_complete"],
        f["watchers"],
        f["all_in_order"],
        ms(&f["p50_ms"]),
        ms(&f["p90_ms"]),
        ms(&f["p99_ms"]),
        ms(&f["p999_ms"]),
        ms(&f["max_ms"]),
        ms(&f["create_call_p50_ms"]),
        ms(&f["create_call_p99_ms"]),
        fmt_opt(f["cpu_cores_used"].as_f64(), 2, ""),
        fmt_opt(f["cpu_us_per_delivery"].as_f64(), 2, ""),
        fmt_opt(f["commit_groups_per_s"].as_f64(), 0, ""),
        f["loadavg_start"].as_str().unwrap_or("?"),
        f["loadavg_end"].as_str().unwrap_or("?"),
    )?;
    Ok(())
}

pub fn fanout(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## Watch fan-out under load\n")?;
    let Some(f) = read_json(&args.results.join("apiserver.json"))
        .map(|api| api["watch_fanout_load"].clone())
        .filter(|f| !f.is_null())
    else {
        writeln!(r.md, "Not measured in this run (suite `apiserver`).")?;
        r.not_run("API server", &[TARGET], "suite `apiserver` not run");
        return Ok(());
    };
    r.section_run(args, "apiserver");
    let num = |v: &Value| v.as_f64().map_or("?".to_owned(), |x| x.to_string());
    writeln!(
        r.md,
        "Command: `PIER_BENCH_FANOUT_WATCHERS={} PIER_BENCH_FANOUT_RATE={} PIER_BENCH_FANOUT_SECONDS={} \
         cargo run --release -p pier-apiserver --example bench -- N` (the last phase of suite \
         `apiserver`, `apiserver/examples/bench_parts/fanout_load.rs`; those are its defaults): a \
         server of its own with a durable store (WAL, group-commit fsync); {} watchers on Endpoints \
         from before the first write, {}; creates paced at a steady rate through the in-process \
         service, in the same process. Latency: from the write's commit (durable and published; the \
         store's history records the instant) to a watcher reading the event's line. Every sample \
         counts: the JSON holds their histogram, the worst watcher's latency for every write and \
         p50/p99/max per second.\n",
        num(&f["watchers"]),
        num(&f["target_writes_per_s"]),
        num(&f["seconds"]),
        num(&f["watchers"]),
        f["transport"].as_str().unwrap_or("?"),
    )?;
    figures_table(r, &f)?;
    let rows = per_second(&f);
    let img = "apiserver_fanout_load.svg";
    plot_over_time(&args.out.join(img), &rows)?;
    if !rows.is_empty() {
        writeln!(r.md, "\n![fan-out latency per second]({IMG}{img})")?;
    }
    let whole = if f["received"] == f["expected"] {
        ""
    } else {
        " (events missing)"
    };
    r.verdict_header();
    r.target(
        "API server",
        TARGET,
        format!(
            "p99 {} at {} with {} watchers{whole}",
            ms(&f["p99_ms"]),
            fmt_opt(f["writes_per_s"].as_f64(), 0, " writes/s"),
            f["watchers"]
        ),
        verdict(&f),
        "the process's 2 CPUs are shared by the writers' validation, the fan-out and 100 TLS \
         clients in the same process; see the CPU and load rows",
    );
    r.md.push_str(&notes(&args.notes, "fanout"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(p99: f64, rate: f64, reached: f64, received: u64) -> Value {
        json!({"target_writes_per_s": rate, "watchers": 100, "writes_per_s": reached,
               "received": received, "expected": 1000, "all_in_order": true, "p99_ms": p99})
    }

    #[test]
    fn judged_only_at_the_target_load_with_every_event() {
        assert_eq!(verdict(&run(20.0, 2000.0, 1990.0, 1000)), Some(true));
        assert_eq!(verdict(&run(60.0, 2000.0, 1990.0, 1000)), Some(false));
        assert_eq!(verdict(&run(20.0, 2000.0, 1500.0, 1000)), Some(false));
        assert_eq!(verdict(&run(20.0, 2000.0, 1990.0, 999)), Some(false));
        assert_eq!(verdict(&run(20.0, 500.0, 500.0, 1000)), None);
    }
}
