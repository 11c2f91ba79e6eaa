//! `pier-bench`: turns the JSON documents written by the bench suites (`PIER_BENCH_JSON`) and
//! criterion's estimates into one Markdown report with every target marked met / not met, and
//! SVG plots of latency against N for Pier and its peer. `benches/run.sh` runs the suites, then
//! this. Kept out of the `pier` binary so plotting never becomes a dependency of the product.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::Value;

/// Command-line arguments: `--results DIR --criterion DIR --out DIR --mode M --command TEXT
/// [--notes DIR] [--load TEXT]`.
#[derive(Debug)]
struct Args {
    results: PathBuf,
    criterion: PathBuf,
    out: PathBuf,
    notes: PathBuf,
    mode: String,
    command: String,
    load: String,
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
    format!(
        "{model}, {cores} cores, Linux {}, {memory} RAM",
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
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max.max(1e-3))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("ms (median; bars: min-max)")
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            pts.iter()
                .map(|p| Circle::new((p.0, p.1), 3, color.filled())),
        )?;
        chart.draw_series(
            pts.iter()
                .map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], color)),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
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

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let mut md = String::new();
    let rev = version_of("git", &["describe", "--always", "--dirty"]);
    writeln!(md, "# Pier benchmark report\n")?;
    writeln!(
        md,
        "Generated by `{}` ({} mode). Every figure below comes from that run; nothing is hand-edited.\n",
        args.command, args.mode
    )?;
    writeln!(md, "- Machine: {}", machine())?;
    writeln!(md, "- Load during the run: {}", args.load)?;
    writeln!(md, "- pier git rev: {rev}")?;
    writeln!(
        md,
        "- netavark: {}",
        version_of("/usr/lib/podman/netavark", &["--version"])
    )?;
    writeln!(
        md,
        "- aardvark-dns: {}",
        version_of("/usr/lib/podman/aardvark-dns", &["--version"])
    )?;
    writeln!(
        md,
        "- dnsperf: {} (Debian package)",
        version_of("dpkg-query", &["-W", "-f", "${Version}", "dnsperf"])
    )?;
    writeln!(md, "- iperf3: {}\n", version_of("iperf3", &["--version"]))?;

    // Issue 2: IPAM (criterion's own estimates, in ns).
    writeln!(md, "## IPAM (issue 2)\n")?;
    let fill = read_json(
        &args
            .criterion
            .join("ipam/fill_slash16_65533/new/estimates.json"),
    );
    match fill
        .as_ref()
        .and_then(|e| e["median"]["point_estimate"].as_f64())
    {
        Some(ns) => {
            let ms = ns / 1e6;
            writeln!(
                md,
                "| target | measured (criterion median) | verdict |\n|---|---:|---|\n| fill a /16 (65,533 addresses) < 50 ms | {ms:.1} ms | {} |",
                verdict(Some(ms < 50.0))
            )?;
        }
        None => writeln!(md, "IPAM: not measured in this run.")?,
    }
    md.push_str(&notes(&args.notes, "ipam"));

    // Issue 3: attach and ports.
    writeln!(md, "\n## Dataplane attach (issue 3)\n")?;
    if let Some(attach) = read_json(&args.results.join("attach.json")) {
        let rows = attach["sizes"].as_array().cloned().unwrap_or_default();
        writeln!(
            md,
            "{} repetitions per size; ms, median (min-max).\n",
            attach["repetitions"]
        )?;
        writeln!(
            md,
            "| endpoints | Pier attach | Pier full apply | netavark setup | netavark / Pier (medians) |\n|---:|---:|---:|---:|---:|"
        )?;
        for r in &rows {
            let ratio = match (
                r["netavark_setup_ms"]["median"].as_f64(),
                r["pier_attach_ms"]["median"].as_f64(),
            ) {
                (Some(t), Some(o)) if o > 0.0 => format!("{:.1}x", t / o),
                _ => "-".to_owned(),
            };
            writeln!(
                md,
                "| {} | {} | {} | {} | {ratio} |",
                r["endpoints"],
                mmm(&r["pier_attach_ms"], 2),
                mmm(&r["pier_full_apply_ms"], 2),
                mmm(&r["netavark_setup_ms"], 1)
            )?;
        }
        let medians: Vec<f64> = rows
            .iter()
            .filter_map(|r| r["pier_attach_ms"]["median"].as_f64())
            .collect();
        let worst = medians
            .iter()
            .copied()
            .fold(None, |a: Option<f64>, m| Some(a.map_or(m, |a| a.max(m))));
        let flat = match (medians.first(), medians.last()) {
            (Some(f), Some(l)) if medians.len() > 1 && *f > 0.0 => Some(l / f),
            _ => None,
        };
        writeln!(md, "\n| target | measured | verdict |\n|---|---:|---|")?;
        writeln!(
            md,
            "| attach < 10 ms median at every size | worst median {} | {} |",
            worst.map_or("-".to_owned(), |w| format!("{w:.2} ms")),
            verdict(worst.map(|w| w < 10.0))
        )?;
        writeln!(
            md,
            "| largest / smallest size <= 1.5x | {} | {} |",
            flat.map_or("-".to_owned(), |f| format!("{f:.2}x")),
            verdict(flat.map(|f| f <= 1.5))
        )?;
        if let (Some(d), Some(p)) = (
            attach["iperf3"]["direct_gbps"].as_f64(),
            attach["iperf3"]["published_gbps"].as_f64(),
        ) {
            writeln!(
                md,
                "| iperf3 through a published port within 10% of direct | {p:.2} vs {d:.2} Gbit/s ({:.0}%) | {} |",
                p / d * 100.0,
                verdict(Some(p >= 0.9 * d))
            )?;
        }
        let series = vec![
            (
                "Pier attach".to_owned(),
                series_of(&rows, "endpoints", "pier_attach_ms"),
            ),
            (
                "netavark setup".to_owned(),
                series_of(&rows, "endpoints", "netavark_setup_ms"),
            ),
        ];
        plot(
            &args.out.join("attach.svg"),
            "Attach latency vs endpoints on the node",
            "endpoints on the node",
            &series,
        )?;
        writeln!(md, "\n![attach latency](attach.svg)")?;
    } else {
        writeln!(md, "Attach: not measured in this run.")?;
    }
    md.push_str(&notes(&args.notes, "attach"));

    writeln!(md, "\n## Published ports (issue 3)\n")?;
    if let Some(ports) = read_json(&args.results.join("ports.json")) {
        let rows = ports["sizes"].as_array().cloned().unwrap_or_default();
        writeln!(
            md,
            "{} repetitions per size, {} ms pause; ms, median (min-max).\n",
            ports["repetitions"], ports["pause_ms"]
        )?;
        writeln!(
            md,
            "| ports already published | add one port (plan+apply) | plan | apply |\n|---:|---:|---:|---:|"
        )?;
        for r in &rows {
            writeln!(
                md,
                "| {} | {} | {} | {} |",
                r["ports"],
                mmm(&r["add_one_ms"], 2),
                mmm(&r["plan_ms"], 2),
                mmm(&r["apply_ms"], 2)
            )?;
        }
        let at_largest = rows
            .last()
            .and_then(|r| Some((r["ports"].as_u64()?, r["add_one_ms"]["median"].as_f64()?)));
        writeln!(md, "\n| target | measured | verdict |\n|---|---:|---|")?;
        writeln!(
            md,
            "| one port with 1000 published < 5 ms median | {} | {} |",
            at_largest.map_or("-".to_owned(), |(n, m)| format!("{m:.2} ms at {n}")),
            verdict(at_largest.filter(|(n, _)| *n >= 1000).map(|(_, m)| m < 5.0))
        )?;
        plot(
            &args.out.join("ports.svg"),
            "Add one published port vs ports already published",
            "ports already published",
            &[(
                "Pier plan+apply".to_owned(),
                series_of(&rows, "ports", "add_one_ms"),
            )],
        )?;
        writeln!(md, "\n![port add latency](ports.svg)")?;
    } else {
        writeln!(md, "Ports: not measured in this run.")?;
    }
    md.push_str(&notes(&args.notes, "ports"));

    writeln!(md, "\n## DNS (issue 4)\n")?;
    if let Some(dns) = read_json(&args.results.join("dns.json")) {
        let ratios: Vec<f64> = dns["qps_ratio_per_round"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median_ratio = sorted.get(sorted.len() / 2).copied();
        let qps = |who: &str| -> String {
            dns["max_qps_rounds"][who]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r["qps"].as_f64())
                        .map(|q| format!("{q:.0}"))
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .unwrap_or_default()
        };
        writeln!(
            md,
            "{} rounds alternating the servers, {} dnsperf clients.\n",
            dns["rounds"],
            dns["clients"].as_str().unwrap_or("?")
        )?;
        writeln!(
            md,
            "| server | max QPS per round | p50 / p99 / max µs at 10,000 QPS |\n|---|---|---|"
        )?;
        for who in ["pier", "aardvark-dns"] {
            let f = &dns["at_10k_qps"][who];
            writeln!(
                md,
                "| {who} | {} | {:.0} / {:.0} / {:.0} |",
                qps(who),
                f["p50_us"].as_f64().unwrap_or(f64::NAN),
                f["p99_us"].as_f64().unwrap_or(f64::NAN),
                f["max_us"].as_f64().unwrap_or(f64::NAN)
            )?;
        }
        let p99 = dns["at_10k_qps"]["pier"]["p99_us"].as_f64();
        let update = dns["update_us"]["p50"].as_f64();
        writeln!(md, "\n| target | measured | verdict |\n|---|---:|---|")?;
        writeln!(
            md,
            "| QPS >= 2x aardvark-dns (per-round pairs) | median {} (rounds: {}) | {} |",
            median_ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
            ratios
                .iter()
                .map(|r| format!("{r:.2}x"))
                .collect::<Vec<_>>()
                .join(", "),
            verdict(median_ratio.map(|r| r >= 2.0))
        )?;
        writeln!(
            md,
            "| p99 < 1 ms at 10,000 QPS | {} | {} |",
            p99.map_or("-".to_owned(), |p| format!("{p:.0} µs")),
            verdict(p99.map(|p| p < 1000.0))
        )?;
        writeln!(
            md,
            "| record update < 5 ms | p50 {} µs, p99 {} µs | {} |",
            update.map_or("-".to_owned(), |u| format!("{u:.0}")),
            dns["update_us"]["p99"]
                .as_f64()
                .map_or("-".to_owned(), |u| format!("{u:.0}")),
            verdict(update.map(|u| u < 5000.0))
        )?;
    } else {
        writeln!(md, "DNS: not measured in this run.")?;
    }
    md.push_str(&notes(&args.notes, "dns"));

    writeln!(md, "\n## Local mode, `pier up` (issue 7)\n")?;
    if let Some(local) = read_json(&args.results.join("local.json")) {
        writeln!(
            md,
            "```json\n{}\n```",
            serde_json::to_string_pretty(&local)?
        )?;
    } else {
        writeln!(
            md,
            "Not measured in this run: apply->ping (< 100 ms median), 500 endpoints reachable (< 10 s) and peak RSS need `pier up`."
        )?;
    }
    md.push_str(&notes(&args.notes, "local"));

    let path = args.out.join("README.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}
