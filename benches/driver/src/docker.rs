//! The `docker` section: Debian's docker.io measured in the same run as Pier (benches/docker.sh),
//! beside Pier's counterparts from the `local` suite. Never a typed-in figure: without a Docker
//! run the targets are "not measured".

use std::fmt::Write as _;

use anyhow::Result;

use crate::runs::SuiteRun;
use crate::{Args, Report, fmt_opt, mmm, notes, read_json, samples_of, samples_plot};

const CONNECT_TARGET: &str =
    "apply -> ping faster than Docker's `network connect` -> ping (medians, same run)";

pub fn docker(r: &mut Report, args: &Args) -> Result<()> {
    r.section = None;
    writeln!(r.md, "\n## Docker, measured beside Pier\n")?;
    let Some(docker) = read_json(&args.results.join("docker.json")) else {
        writeln!(
            r.md,
            "Not measured in this run (suite `docker`: needs Debian's docker.io and busybox-static)."
        )?;
        r.not_run(
            "Docker",
            &[CONNECT_TARGET],
            "suite `docker` not run or Docker not installed",
        );
        return Ok(());
    };
    r.section_run(args, "docker");
    let down = &docker["compose_down"];
    writeln!(
        r.md,
        "Command: `PIER_BENCH_RUNS={} PIER_BENCH_DOWN={} benches/docker.sh`: Docker {} (a dockerd of the \
         bench's own in a network namespace of its own, vfs storage, busybox-static imported as the image). \
         `docker network connect --ip` of a running container to a user-defined bridge network, timed until \
         the container answers ping on it; then {} containers on that network removed at once \
         (`docker rm -f`, 16 in parallel, as `docker compose down` removes a project's containers \
         concurrently), timed until none of their veths is left.\n",
        docker["runs"],
        down["containers"],
        docker["docker"].as_str().unwrap_or("?"),
        down["containers"],
    )?;
    writeln!(r.md, "| measurement | ms, median (min-max) |\n|---|---:|")?;
    writeln!(
        r.md,
        "| `docker network connect` -> ping | {} |\n| of which: the `docker network connect` command | {} |\n\
         | {} containers removed at once -> no veth left | {} (the `docker rm` commands returned at {}) |",
        mmm(&docker["network_connect_to_ping_ms"], 0),
        mmm(&docker["network_connect_ms"], 0),
        down["containers"],
        down["all_veths_gone_ms"],
        down["rm_returned_ms"],
    )?;
    // Pier's counterpart, when the local suite measured the same code in this report.
    let local_is_current = read_json(&args.results.join("local.meta.json"))
        .is_some_and(|meta| SuiteRun::from_meta(&meta).is_current(&args.fingerprint));
    let pier = read_json(&args.results.join("local.json"))
        .and_then(|l| l["apply_to_ping_ms"]["median"].as_f64())
        .filter(|_| local_is_current);
    let theirs = docker["network_connect_to_ping_ms"]["median"].as_f64();
    r.verdict_header();
    r.target(
        "Docker",
        CONNECT_TARGET,
        format!(
            "Pier {} (local suite, when measured on this code), Docker {}",
            fmt_opt(pier, 1, " ms"),
            fmt_opt(theirs, 0, " ms")
        ),
        pier.zip(theirs).map(|(ours, theirs)| ours < theirs),
        "",
    );
    samples_plot(
        r,
        args,
        "docker",
        "Docker network connect -> ping, every run",
        "ms",
        vec![(
            "docker network connect -> ping".to_owned(),
            samples_of(&docker["network_connect_to_ping_ms"]),
        )],
    )?;
    r.md.push_str(&notes(&args.notes, "docker"));
    Ok(())
}
