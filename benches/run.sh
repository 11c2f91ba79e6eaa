#!/usr/bin/env bash
# One command for all Pier benchmarks: runs every suite on this machine, collects their JSON
# (PIER_BENCH_JSON) and criterion's estimates, and regenerates BENCHMARKS.md (every target met /
# not met, plots in benches/report/).
#   benches/run.sh [--quick|--full] [--load "what else ran on the machine"] [--help]
# --quick (default): fewer repetitions and smaller N, under ~2 minutes once built.
# --full: the sizes and repetitions the targets are judged at (10/100/1000 endpoints and ports, 500
# and 2,000 Endpoints at once through `pier up`, 3 times each; overlay: 3 nodes x 300 Endpoints, 100 create->ping runs, 1,000
# create/delete cycles; teardown: 500 Endpoints deleted at once, 3 rounds each way, 1 in --quick).
# PIER_BENCH_SUITES="ipam attach ports dns state apiserver operator local docker overlay memory teardown"
# picks suites (default all; `docker` measures Debian's docker.io as a peer when it is installed).
# PIER_BENCH_OUT=DIR writes the report to DIR/BENCHMARKS.md instead, leaving the committed one.
# Needs root (network namespaces, nftables) and netavark, aardvark-dns, dnsperf, iperf3, fping,
# kubectl, socat, nsenter (Debian: apt-get install netavark aardvark-dns dnsperf iperf3 fping socat);
# the docker suite also docker.io and busybox-static (without them it is reported as not measured).
# The report is written by the driver crate in benches/driver (package pier-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=quick
load="not stated (pass --load)"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --load) load="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "usage: benches/run.sh [--quick|--full] [--load TEXT] [--help]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "benches/run.sh needs root (network namespaces, nftables)" >&2; exit 1; }

out="${PIER_BENCH_OUT:-benches/report}"  # another directory keeps a committed report intact
json="$(realpath -m "$out")/json"
mkdir -p "$json"
started="$(date -u '+%s')"
run_id="$(date -u -d "@$started" '+%Y-%m-%d %H:%M UTC')"
# Each run's copy under runs/ is named to the second: two runs started within one minute (two
# runs of one suite, to judge a borderline figure) must not overwrite each other.
run_file="$(date -u -d "@$started" '+%Y%m%dT%H%M%SZ').json"
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_start="$(loadavg)"

if [ "$mode" = full ]; then
  criterion_args=()
  attach_env=(PIER_BENCH_SIZES=10,100,1000 PIER_BENCH_REPS=15 PIER_BENCH_IPERF=1
    PIER_BENCH_FAMILIES=ipv4,dual)
  ports_env=(PIER_BENCH_SIZES=10,100,1000 PIER_BENCH_REPS=50)
  dns_env=(PIER_BENCH_ROUNDS=3)
  api_objects=10000
  local_env=(PIER_BENCH_RUNS=30 PIER_BENCH_SCALE=100,500,2000 PIER_BENCH_AT_ONCE_RUNS=3)
  docker_env=(PIER_BENCH_RUNS=30 PIER_BENCH_DOWN=500)
  overlay_env=(PIER_BENCH_RUNS=100 PIER_BENCH_PER_NODE=300 PIER_BENCH_CHURN=1000
    PIER_BENCH_IPERF_ROUNDS=3 PIER_BENCH_IPERF_SECONDS=5)
  memory_env=(PIER_BENCH_STARTS=10)
  teardown_env=(PIER_BENCH_TEARDOWN_SIZE=500 PIER_BENCH_TEARDOWN_RUNS=3)
else
  criterion_args=(--warm-up-time 1 --measurement-time 2 'ipam/(fill_slash16|first_1000_of_slash64)')
  attach_env=(PIER_BENCH_SIZES=10,100 PIER_BENCH_REPS=5 PIER_BENCH_IPERF=0
    PIER_BENCH_FAMILIES=ipv4,dual)
  ports_env=(PIER_BENCH_SIZES=10,100,1000 PIER_BENCH_REPS=10)
  dns_env=(PIER_BENCH_ROUNDS=1)
  api_objects=2000
  local_env=(PIER_BENCH_RUNS=10 PIER_BENCH_SCALE=100)
  docker_env=(PIER_BENCH_RUNS=5 PIER_BENCH_DOWN=50)
  overlay_env=(PIER_BENCH_RUNS=10 PIER_BENCH_PER_NODE=30 PIER_BENCH_CHURN=100
    PIER_BENCH_IPERF_ROUNDS=1 PIER_BENCH_IPERF_SECONDS=2)
  memory_env=(PIER_BENCH_STARTS=3 PIER_BENCH_ENDPOINTS=100 PIER_BENCH_CHURN=100
    PIER_BENCH_CHURN_ROUNDS=2 PIER_BENCH_STORED=500)
  teardown_env=(PIER_BENCH_TEARDOWN_SIZE=500 PIER_BENCH_TEARDOWN_RUNS=1)
fi

# PIER_BENCH_SUITES picks suites (default all); the report reads IPAM from target/criterion.
suites=" ${PIER_BENCH_SUITES:-ipam attach ports dns state apiserver operator local docker overlay memory teardown} "
run() { [[ "$suites" == *" $1 "* ]]; }
# A suite's JSON is replaced only when it runs (the report says which figures are from an earlier
# run, from SUITE.meta.json); a suite that fails leaves no JSON behind.
for suite in $suites; do rm -f "$json/$suite.json" "$json/$suite.meta.json"; done
# The code measured: its revision for people, its fingerprint (benches/fingerprint.sh) for the
# report, which judges only suites measured on the code it is about.
revision="$(git describe --always --dirty)"
fingerprint="$(benches/fingerprint.sh)"
runs_kept=10
ran() { # suite: records which run wrote its JSON, and keeps a copy of it under runs/SUITE/
  jq -n --arg run "$run_id" --arg command "benches/run.sh --$mode" --arg mode "$mode" --arg load "$load" \
    --arg avg "$(loadavg)" --arg revision "$revision" --arg fingerprint "$fingerprint" \
    '{run: $run, command: $command, mode: $mode, revision: $revision, fingerprint: $fingerprint,
      load: "\($load); load average when it ended: \($avg)"}' >"$json/$1.meta.json"
  mkdir -p "$json/runs/$1"
  jq -n --slurpfile meta "$json/$1.meta.json" --slurpfile results "$json/$1.json" \
    '{meta: $meta[0], results: $results[0]}' >"$json/runs/$1/$run_file"
  # The newest runs only: the report judges the figures that move between runs over the last few
  # runs of a code.
  find "$json/runs/$1" -name '*.json' | sort | head -n "-$runs_kept" | xargs -r rm -f
}

echo "== building what the suites need (release)"
# The report driver first: a run that cannot write its report should fail before the suites.
cargo build -q -p pier-bench
if run ipam || run operator; then
  cargo bench -p pier-operator --bench ipam --bench controllers --no-run
fi
if run attach || run ports || run dns || run state; then
  cargo bench -p pier-node --bench attach --bench ports --bench dns --bench state --no-run
fi
if run apiserver; then cargo build --release -p pier-apiserver --example bench; fi
if run local || run overlay || run memory || run teardown; then cargo build --release -p pier; fi
# The suites' scripts run the pier binary from where cargo put it.
pier_bin="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/pier"

if run ipam; then
echo "== IPAM (criterion)"
cargo bench -p pier-operator --bench ipam -- "${criterion_args[@]}"
# criterion's medians, and its raw samples as time per iteration (sample.json: iters, times in ns).
per_iteration='[.times, .iters] | transpose | map(.[0] / .[1] / 1e6)'
jq -s "{bench: \"ipam\", fill_slash16_65533_median_ns: .[0].median.point_estimate,
  first_1000_of_slash64_median_ns: .[1].median.point_estimate,
  fill_slash16_65533_samples_ms: (.[2] | $per_iteration),
  first_1000_of_slash64_samples_ms: (.[3] | $per_iteration)}" \
  target/criterion/ipam/fill_slash16_65533/new/estimates.json \
  target/criterion/ipam/first_1000_of_slash64/new/estimates.json \
  target/criterion/ipam/fill_slash16_65533/new/sample.json \
  target/criterion/ipam/first_1000_of_slash64/new/sample.json >"$json/ipam.json"
ran ipam
fi
if run attach; then
echo "== attach: Pier vs netavark"
env "${attach_env[@]}" PIER_BENCH_JSON="$json/attach.json" cargo bench -p pier-node --bench attach
ran attach
fi
if run ports; then
echo "== published ports"
env "${ports_env[@]}" PIER_BENCH_JSON="$json/ports.json" cargo bench -p pier-node --bench ports
ran ports
fi
if run dns; then
echo "== DNS: Pier vs aardvark-dns (dnsperf)"
env "${dns_env[@]}" PIER_BENCH_JSON="$json/dns.json" cargo bench -p pier-node --bench dns
ran dns
fi

if run state; then
echo "== node state: N Endpoints at once, whole build per event vs incremental"
PIER_BENCH_REPS="$([ "$mode" = full ] && echo 5 || echo 1)" PIER_BENCH_JSON="$json/state.json" \
  cargo bench -p pier-node --bench state
ran state
fi
if run apiserver; then
echo "== API server"
WATCHERS=10 PIER_BENCH_JSON="$json/apiserver.json" \
  cargo run -q --release -p pier-apiserver --example bench -- "$api_objects"
ran apiserver
fi
if run operator; then
echo "== operator"
PIER_BENCH_JSON="$json/operator.json" cargo bench -p pier-operator --bench controllers
ran operator
fi
if run local; then
echo "== local mode (pier up)"
env "${local_env[@]}" PIER_BIN="$pier_bin" PIER_BENCH_JSON="$json/local.json" benches/local.sh
ran local
fi
if run docker; then
echo "== Docker (peer): network connect, compose down"
env "${docker_env[@]}" PIER_BENCH_JSON="$json/docker.json" benches/docker.sh
# Without Docker the script writes nothing: the report says "not measured".
if [ -f "$json/docker.json" ]; then ran docker; fi
fi
if run overlay; then
echo "== overlay networks across three nodes (pier up + pier node)"
env "${overlay_env[@]}" PIER_BIN="$pier_bin" PIER_BENCH_JSON="$json/overlay.json" benches/overlay.sh
ran overlay
fi
if run teardown; then
echo "== bulk teardown (pier up): Endpoints deleted at once"
env "${teardown_env[@]}" PIER_BIN="$pier_bin" PIER_BENCH_JSON="$json/teardown.json" benches/teardown.sh
ran teardown
fi

if run memory; then
echo "== memory, binary size and startup (pier up)"
env "${memory_env[@]}" PIER_BIN="$pier_bin" PIER_BENCH_JSON="$json/memory.json" benches/memory.sh
ran memory
fi

echo "== report"
if [ "$(realpath -m "$out")" = "$(realpath -m benches/report)" ]; then
  report=(--benchmarks BENCHMARKS.md --image-prefix benches/report/ --readme README.md)
else
  report=(--benchmarks "$out/BENCHMARKS.md")
fi
cargo run -q -p pier-bench -- --results "$json" --criterion target/criterion --out "$out" \
  --notes benches/notes --fingerprint "$(benches/fingerprint.sh)" "${report[@]}" \
  --mode "$mode" --command "benches/run.sh --$mode" --run-id "$run_id" \
  --load "$load; load average (1/5/15 min) at the start $load_start, at the end $(loadavg)" \
  --suites "$suites"
