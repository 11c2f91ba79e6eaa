//! The `memory` section: what `pier up` holds (RSS idle, with Endpoints attached, after deleting
//! them, after rounds of churn), the release binary's size, and how long `pier up` takes to be
//! ready (benches/memory.sh); the targets of issue 19.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::SeriesLabelPosition;
use serde_json::Value;

use crate::chart::{self, Frame};
use crate::runs::Threshold;
use crate::{Args, IMG, Report, fmt_opt, notes, read_json};

const ATTACHED_TARGET: &str = "pier up with 500 Endpoints attached: RSS < 80 MiB";
const RETURN_TARGET: &str = "pier up after deleting them: RSS within 25% of its idle RSS";
const EMPTY_TARGET: &str = "pier up -> ready on an empty data directory: < 0.5 s (median)";
const STORED_TARGET: &str = "pier up -> ready with 2,000 objects stored: < 2 s (median)";
const BINARY_TARGET: &str = "release binary without debug info";

/// Binary sizes are reported in MB (10^6 bytes), as `ls -h --si` and registries show them.
const MB: f64 = 1e6;

/// The RSS row whose `what` starts with `prefix`.
fn rss<'a>(m: &'a Value, prefix: &str) -> Option<&'a Value> {
    m["rss"]
        .as_array()?
        .iter()
        .find(|r| r["what"].as_str().is_some_and(|w| w.starts_with(prefix)))
}

/// RSS after the deletion over idle RSS: at most this (within 25%).
const RETURN_LIMIT: f64 = 1.25;

/// The memory targets are judged only for a run that attached at least this many Endpoints.
const JUDGED_AT: u64 = 500;

/// RSS with the Endpoints attached: under this, in MiB.
const ATTACHED_LIMIT_MIB: f64 = 80.0;

/// The (stage number, MiB) points of one RSS column, in the order of the rows.
fn column(m: &Value, key: &str) -> Vec<(i32, f64)> {
    m["rss"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, row)| Some((i32::try_from(i + 1).ok()?, row[key].as_f64()?)))
        .collect()
}

/// RSS and what it is made of at each stage of the run, with both limits; false when the run
/// has no stage to draw.
fn plot_rss(path: &Path, m: &Value) -> Result<bool> {
    let lines = [
        ("RSS (VmRSS)", column(m, "vmrss_mib")),
        ("anonymous (heap, stacks)", column(m, "rss_anon_mib")),
        ("binary pages read in", column(m, "rss_file_mib")),
        ("high-water (VmHWM)", column(m, "vmhwm_mib")),
    ];
    let Some(stages) = lines[0].1.last().map(|p| p.0) else {
        return Ok(false);
    };
    let idle = rss(m, "idle").and_then(|r| r["vmrss_mib"].as_f64());
    let y_max = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(ATTACHED_LIMIT_MIB, f64::max)
        * 1.5; // the top third for the legend
    let frame = Frame::new(
        "pier up: memory at each stage",
        "stage, in the order of the table above (1: idle)",
        "MiB",
    )
    .legend(SeriesLabelPosition::UpperRight);
    chart::draw(path, frame, 0..stages + 1, 0.0..y_max, |c| {
        for (i, (label, points)) in lines.iter().enumerate() {
            chart::line(c, points.iter().copied(), chart::color(i), *label)?;
        }
        let endpoints = m["endpoints"].as_u64().unwrap_or(0);
        chart::target_line(
            c,
            (0, ATTACHED_LIMIT_MIB),
            (stages + 1, ATTACHED_LIMIT_MIB),
            &format!("limit with {endpoints} attached: {ATTACHED_LIMIT_MIB} MiB"),
        )?;
        if let Some(idle) = idle {
            let back = idle * RETURN_LIMIT;
            chart::target_line(
                c,
                (0, back),
                (stages + 1, back),
                &format!(
                    "limit after deleting them: idle + {:.0}% ({back:.1} MiB)",
                    (RETURN_LIMIT - 1.0) * 100.0
                ),
            )?;
        }
        Ok(())
    })?;
    Ok(true)
}

/// RSS after deleting the Endpoints over idle RSS, in a run of the suite (`memory.json`) that
/// attached enough of them to be judged ([`JUDGED_AT`]).
pub fn return_ratio(m: &Value) -> Option<f64> {
    let mib = |prefix: &str| rss(m, prefix).and_then(|r| r["vmrss_mib"].as_f64());
    let endpoints = m["endpoints"].as_u64().filter(|n| *n >= JUDGED_AT)?;
    let idle = mib("idle").filter(|i| *i > 0.0)?;
    Some(mib(&format!("{endpoints} deleted"))? / idle)
}

pub fn memory(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## Memory, binary size and startup\n")?;
    let targets = [
        ATTACHED_TARGET,
        RETURN_TARGET,
        EMPTY_TARGET,
        STORED_TARGET,
        BINARY_TARGET,
    ];
    let Some(m) = read_json(&args.results.join("memory.json")) else {
        writeln!(r.md, "Not measured in this run (suite `memory`).")?;
        r.not_run("memory", &targets, "suite `memory` not run");
        r.md.push_str(&notes(&args.notes, "memory"));
        return Ok(());
    };
    r.section_run(args, "memory");
    let c = &m["commands"];
    writeln!(
        r.md,
        "Command: `PIER_BENCH_STARTS=N benches/memory.sh` (run by `benches/run.sh`): `{}`; RSS read with `{}` \
         after {} s without requests; Endpoints created with `{}`; ready timed as {}. \
         Peers: kind {}; k3s {}.\n",
        c["pier_up"].as_str().unwrap_or("?"),
        c["rss"].as_str().unwrap_or("?"),
        m["settle_s"],
        c["apply"].as_str().unwrap_or("?"),
        c["ready"].as_str().unwrap_or("?").replace('`', ""),
        m["peers"]["kind"].as_str().unwrap_or("not measured"),
        m["peers"]["k3s"].as_str().unwrap_or("not measured"),
    )?;
    writeln!(r.md, "| when | RSS | high-water (VmHWM) |\n|---|---:|---:|")?;
    for row in m["rss"].as_array().into_iter().flatten() {
        writeln!(
            r.md,
            "| {} | {} | {} |",
            row["what"].as_str().unwrap_or("?"),
            fmt_opt(row["vmrss_mib"].as_f64(), 1, " MiB"),
            fmt_opt(row["vmhwm_mib"].as_f64(), 1, " MiB")
        )?;
    }
    let startup = &m["startup_s"];
    let samples = |v: &Value| {
        v["samples"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .map(|s| format!("{s:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    writeln!(
        r.md,
        "\n| startup | median | samples (s) |\n|---|---:|---|\n\
         | empty data directory | {} | {} |\n\
         | {} Endpoints stored ({} bytes on disk) | {} | {} |",
        fmt_opt(startup["empty"]["median"].as_f64(), 3, " s"),
        samples(&startup["empty"]),
        startup["stored"]["objects"],
        startup["stored"]["store_bytes"],
        fmt_opt(startup["stored"]["median"].as_f64(), 3, " s"),
        samples(&startup["stored"]),
    )?;
    let bin = &m["binary"];
    let bytes = bin["bytes"].as_f64();
    let debug: Vec<&str> = bin["debug_sections"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    writeln!(
        r.md,
        "\nRelease binary: {} ({}); image: {}.",
        fmt_opt(bytes.map(|b| b / MB), 1, " MB"),
        if debug.is_empty() {
            "no debug sections".to_owned()
        } else {
            format!("debug sections {}", debug.join(", "))
        },
        image(&m["image"])
    )?;
    verdicts(r, &m, bytes, &debug);
    let plot = args.out.join("memory.svg");
    // Linked only when this run drew it (a file left by an earlier run is not this run's).
    if plot_rss(&plot, &m)? {
        writeln!(r.md, "\n![pier up: memory at each stage]({IMG}memory.svg)")?;
    }
    r.md.push_str(&notes(&args.notes, "memory"));
    Ok(())
}

/// The image's size as Docker reports it, and its layer as a registry stores it; or why the
/// image was not measured, with its layer's size when that was.
fn image(image: &Value) -> String {
    let layer = match (
        image["layer_gzip_bytes"].as_f64(),
        image["layer_bytes"].as_f64(),
    ) {
        (Some(gzip), Some(tar)) => format!(
            "its one layer {:.1} MB as gzip (as `docker push` stores it), {:.1} MB as tar, {} files",
            gzip / MB,
            tar / MB,
            image["files"]
        ),
        _ => "its layer not measured".to_owned(),
    };
    match image["bytes"].as_f64() {
        Some(b) if image["measured"].as_bool() == Some(true) => format!(
            "{:.1} MB as Docker {} reports it (the Dockerfile's runtime root filesystem, from \
             image/rootfs.list with this release binary, imported; `{}` printed by the binary \
             run from it); {layer}",
            b / MB,
            image["docker"].as_str().unwrap_or("(version not recorded)"),
            image["version_from_image"].as_str().unwrap_or("nothing"),
        ),
        _ => format!(
            "not measured ({}); {layer}",
            image["why"].as_str().unwrap_or("no reason recorded")
        ),
    }
}

fn verdicts(r: &mut Report, m: &Value, bytes: Option<f64>, debug: &[&str]) {
    let mib = |row: Option<&Value>| row.and_then(|r| r["vmrss_mib"].as_f64());
    let endpoints = m["endpoints"].as_u64().unwrap_or(0);
    let idle = mib(rss(m, "idle"));
    let attached = mib(rss(m, &format!("{endpoints} attached")));
    let deleted = mib(rss(m, &format!("{endpoints} deleted")));
    let churned = mib(rss(m, "after "));
    let judged = endpoints >= JUDGED_AT;
    r.verdict_header();
    r.target(
        "memory",
        ATTACHED_TARGET,
        format!("{} at {endpoints}", fmt_opt(attached, 1, " MiB")),
        attached.filter(|_| judged).map(|a| a < ATTACHED_LIMIT_MIB),
        "see the memory notes: what the process holds per Endpoint",
    );
    let ratio = |after: Option<f64>| match (idle, after) {
        (Some(i), Some(a)) if i > 0.0 => format!("{:+.0}%", (a / i - 1.0) * 100.0),
        _ => "-".to_owned(),
    };
    r.judged(
        "memory",
        RETURN_TARGET,
        format!(
            "idle {}, after deleting {endpoints} {} ({}); after the churn rounds {} ({})",
            fmt_opt(idle, 1, " MiB"),
            fmt_opt(deleted, 1, " MiB"),
            ratio(deleted),
            fmt_opt(churned, 1, " MiB"),
            ratio(churned)
        ),
        (return_ratio(m), Threshold::AtMost(RETURN_LIMIT)),
        return_ratio,
        "see the memory notes: what stays after the Endpoints are gone",
    );
    let startup = &m["startup_s"];
    let empty = startup["empty"]["median"].as_f64();
    r.target(
        "memory",
        EMPTY_TARGET,
        fmt_opt(empty, 3, " s"),
        empty.map(|s| s < 0.5),
        "see the samples above",
    );
    let stored = startup["stored"]["median"].as_f64();
    let objects = startup["stored"]["objects"].as_u64().unwrap_or(0);
    r.target(
        "memory",
        STORED_TARGET,
        format!("{} with {objects}", fmt_opt(stored, 3, " s")),
        stored.filter(|_| objects >= 2000).map(|s| s < 2.0),
        "see the samples above",
    );
    r.target(
        "memory",
        BINARY_TARGET,
        format!(
            "{}, {} debug sections",
            fmt_opt(bytes.map(|b| b / MB), 1, " MB"),
            debug.len()
        ),
        bytes.map(|_| debug.is_empty()),
        "the release profile keeps debug info",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_reported_with_its_layer_or_says_why_not() {
        let layer = serde_json::json!({"layer_bytes": 59_852_800, "layer_gzip_bytes": 19_485_786, "files": 146});
        let mut measured = layer.clone();
        measured["measured"] = true.into();
        measured["bytes"] = 59_735_504.into();
        measured["docker"] = "20.10.24+dfsg1".into();
        measured["version_from_image"] = "pier 0.1.0".into();
        let text = image(&measured);
        assert!(
            text.starts_with("59.7 MB as Docker 20.10.24+dfsg1 reports it"),
            "{text}"
        );
        assert!(text.contains("`pier 0.1.0` printed"), "{text}");
        assert!(
            text.ends_with(
                "19.5 MB as gzip (as `docker push` stores it), 59.9 MB as tar, 146 files"
            ),
            "{text}"
        );
        let mut without_docker = layer;
        without_docker["measured"] = false.into();
        without_docker["why"] = "no Docker here".into();
        assert!(
            image(&without_docker)
                .starts_with("not measured (no Docker here); its one layer 19.5 MB")
        );
        assert_eq!(
            image(&serde_json::json!({})),
            "not measured (no reason recorded); its layer not measured"
        );
    }

    #[test]
    fn each_rss_column_is_numbered_by_stage() {
        let m = serde_json::json!({"rss": [
            {"what": "idle", "vmrss_mib": 30.0, "rss_anon_mib": 5.0},
            {"what": "500 attached", "vmrss_mib": 70.0}]});
        assert_eq!(column(&m, "vmrss_mib"), vec![(1, 30.0), (2, 70.0)]);
        assert_eq!(column(&m, "rss_anon_mib"), vec![(1, 5.0)]);
        assert!(column(&serde_json::json!({}), "vmrss_mib").is_empty());
    }

    #[test]
    fn back_within_a_quarter_of_idle() {
        let run = |after: f64| {
            serde_json::json!({"endpoints": 500, "rss": [
                {"what": "idle", "vmrss_mib": 40.0},
                {"what": "500 deleted", "vmrss_mib": after}]})
        };
        let within = |after| {
            return_ratio(&run(after)).is_some_and(|r| Threshold::AtMost(RETURN_LIMIT).met(r))
        };
        assert!(within(50.0));
        assert!(!within(50.1));
        let few = serde_json::json!({"endpoints": 100, "rss": run(45.0)["rss"]});
        assert_eq!(return_ratio(&few), None, "too few Endpoints to judge");
    }

    #[test]
    fn rss_rows_are_found_by_their_start() {
        let m = serde_json::json!({"rss": [
            {"what": "idle", "vmrss_mib": 30.0},
            {"what": "500 attached", "vmrss_mib": 70.0},
            {"what": "after 4 rounds of 300", "vmrss_mib": 35.0}]});
        assert_eq!(
            rss(&m, "500 attached").map(|r| &r["vmrss_mib"]),
            Some(&serde_json::json!(70.0))
        );
        assert_eq!(
            rss(&m, "after ").map(|r| &r["vmrss_mib"]),
            Some(&serde_json::json!(35.0))
        );
        assert!(rss(&m, "500 deleted").is_none());
    }
}
