#!/usr/bin/env bash
# Docker, measured in the same run as Pier (suite `docker` of benches/run.sh): how long
# `docker network connect` takes until the container answers ping on its new network (Pier's
# counterpart: the local suite's apply -> ping), and how long removing N containers at once, as
# `docker compose down` does, takes until none of their veths is left (Pier's counterpart:
# deleting N Endpoints at once). Runs alone too:
#   sudo PIER_BENCH_RUNS=10 PIER_BENCH_DOWN=100 PIER_BENCH_JSON=/tmp/docker.json benches/docker.sh
# Needs Debian's docker.io (dockerd, containerd, runc) and busybox-static; without a dockerd it
# writes nothing and exits 0, and the report says "not measured".
#
# Nothing touches the machine's own Docker or network namespace: the dockerd is the bench's own
# (benches/dockerd.sh), in network namespace `pbd<pid>`. The image is busybox-static imported
# as a root filesystem (no registry).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/dockerd.sh
. benches/dockerd.sh

runs="${PIER_BENCH_RUNS:-10}"
down="${PIER_BENCH_DOWN:-100}"
json_out="${PIER_BENCH_JSON:-}"
[ "$(id -u)" = 0 ] || { echo "benches/docker.sh needs root" >&2; exit 1; }
if ! dockerd_available || ! [ -x /bin/busybox ]; then
  echo "docker suite: dockerd, /usr/bin/docker or busybox-static missing: not measured"
  exit 0
fi

work="$(mktemp -d /tmp/pier-bench-docker.XXXXXX)"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
stats() { # JSON numbers on stdin, one per line -> {median, min, max, samples}
  jq -s 'if length == 0 then null else (sort) as $s | {median: (if ($s | length) % 2 == 1
    then $s[($s | length) / 2 | floor] else ($s[($s | length) / 2 - 1] + $s[($s | length) / 2]) / 2 end),
    min: $s[0], max: $s[-1], samples: .} end'
}
cleanup() {
  dockerd_stop
  rm -rf "$work"
}
trap cleanup EXIT

dockerd_start "pbd$$" "$work"
version="$($docker version --format '{{.Server.Version}}')"
echo "== Docker $version (dockerd of its own in namespace $dockerd_netns)"

mkdir -p "$work/rootfs/bin"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in sh sleep; do ln -s busybox "$work/rootfs/bin/$applet"; done
tar -C "$work/rootfs" -c . | $docker import - pier-bench/busybox >/dev/null
$docker network create --subnet 172.31.0.0/16 bench >/dev/null

# network connect -> ping: a running container (on Docker's default bridge, as `docker run`
# leaves it) joins `bench` with a static address; ping from the namespace of dockerd's bridges.
$docker run -d --name connect pier-bench/busybox sleep 86400 >/dev/null
connect_samples=()
ping_samples=()
for i in $(seq "$runs"); do
  address="172.31.1.$((i % 250 + 1))"
  start="$(now_ms)"
  $docker network connect --ip "$address" bench connect
  connected="$(now_ms)"
  until dockerd_in_ns ping -c1 -W1 "$address" >/dev/null 2>&1; do :; done
  answered="$(now_ms)"
  connect_samples+=("$((connected - start))")
  ping_samples+=("$((answered - start))")
  $docker network disconnect bench connect
done
connect_json="$(printf '%s\n' "${connect_samples[@]}" | stats)"
ping_json="$(printf '%s\n' "${ping_samples[@]}" | stats)"
echo "   network connect -> ping: median $(jq .median <<<"$ping_json") ms (the command itself: $(jq .median <<<"$connect_json") ms)"

# compose down: N containers on `bench`, removed in parallel (compose removes a project's
# containers concurrently), until no veth is left in the namespace.
veths() { dockerd_in_ns ip -o link show type veth | wc -l; }
base="$(veths)"
seq "$down" | xargs -P 8 -I{} $docker run -d --network bench --name "down-{}" pier-bench/busybox sleep 86400 >/dev/null
[ "$(veths)" -ge $((base + down)) ] || { echo "expected $down more veths" >&2; exit 1; }
start="$(now_ms)"
seq "$down" | xargs -P 16 -I{} $docker rm -f "down-{}" >/dev/null
removed="$(now_ms)"
until [ "$(veths)" -le "$base" ]; do sleep 0.01; done
gone="$(now_ms)"
echo "   $down containers removed at once: veths gone after $((gone - start)) ms"

document="$(jq -n --arg version "$version" --argjson runs "$runs" --argjson connect "$connect_json" \
  --argjson ping "$ping_json" --argjson down "$down" --argjson removed "$((removed - start))" \
  --argjson gone "$((gone - start))" \
  '{bench: "docker", docker: $version, runs: $runs, network_connect_ms: $connect,
    network_connect_to_ping_ms: $ping,
    compose_down: {containers: $down, rm_returned_ms: $removed, all_veths_gone_ms: $gone}}')"
[ -z "$json_out" ] || printf '%s\n' "$document" >"$json_out"
