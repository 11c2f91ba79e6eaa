#!/usr/bin/env bash
# One command for all Pier benchmarks: runs every suite on this machine, collects their JSON
# (PIER_BENCH_JSON) and criterion's estimates, and writes benches/report/README.md with plots.
#   benches/run.sh [--quick|--full] [--load "what else ran on the machine"]
# --quick (default): fewer repetitions and smaller N, under ~2 minutes once built.
# --full: the sizes and repetitions the issues ask for (10/100/1000 endpoints and ports).
# Needs root (network namespaces, nftables) and netavark, aardvark-dns, dnsperf, iperf3.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=quick
load="not stated (pass --load)"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --load) load="$2"; shift ;;
    *) echo "usage: benches/run.sh [--quick|--full] [--load TEXT]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "benches/run.sh needs root (network namespaces, nftables)" >&2; exit 1; }

out="${PIER_BENCH_OUT:-benches/report}"  # another directory keeps a committed report intact
json="$(realpath -m "$out")/json"
mkdir -p "$json"
rm -f "$json"/*.json

if [ "$mode" = full ]; then
  criterion_args=()
  attach_env=(PIER_BENCH_SIZES=10,100,1000 PIER_BENCH_REPS=15 PIER_BENCH_IPERF=1)
  ports_env=(PIER_BENCH_SIZES=10,100,1000 PIER_BENCH_REPS=50)
  dns_env=(PIER_BENCH_ROUNDS=3)
else
  criterion_args=(--warm-up-time 1 --measurement-time 2 ipam/fill_slash16)
  attach_env=(PIER_BENCH_SIZES=10,100 PIER_BENCH_REPS=5 PIER_BENCH_IPERF=0)
  ports_env=(PIER_BENCH_SIZES=10,100,1000 PIER_BENCH_REPS=10)
  dns_env=(PIER_BENCH_ROUNDS=1)
fi

echo "== building the bench binaries (release)"
cargo bench -p pier-operator --bench ipam --no-run
cargo bench -p pier-node --bench attach --bench ports --bench dns --no-run

# PIER_BENCH_SUITES picks suites (default all); the report reads IPAM from target/criterion.
suites=" ${PIER_BENCH_SUITES:-ipam attach ports dns} "
run() { [[ "$suites" == *" $1 "* ]]; }
if run ipam; then
echo "== IPAM (criterion)"
cargo bench -p pier-operator --bench ipam -- "${criterion_args[@]}"
fi
if run attach; then
echo "== attach: Pier vs netavark"
env "${attach_env[@]}" PIER_BENCH_JSON="$json/attach.json" cargo bench -p pier-node --bench attach
fi
if run ports; then
echo "== published ports"
env "${ports_env[@]}" PIER_BENCH_JSON="$json/ports.json" cargo bench -p pier-node --bench ports
fi
if run dns; then
echo "== DNS: Pier vs aardvark-dns (dnsperf)"
env "${dns_env[@]}" PIER_BENCH_JSON="$json/dns.json" cargo bench -p pier-node --bench dns
fi

echo "== report"
cargo run -q -p pier-bench -- --results "$json" --criterion target/criterion --out "$out" \
  --notes benches/notes --mode "$mode" --command "benches/run.sh --$mode" --load "$load"
