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
# Nothing touches the machine's own Docker or network namespace: a dockerd of its own runs in a
# network namespace made here (`pbd<pid>`, entered with nsenter: `ip netns exec` would remount
# /sys and hide the cgroup mounts dockerd needs), with its data, socket and containerd namespace
# in a temporary directory; its bridges, veths and iptables rules live and die with that
# namespace. The image is busybox-static imported as a root filesystem (no registry).
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${PIER_BENCH_RUNS:-10}"
down="${PIER_BENCH_DOWN:-100}"
json_out="${PIER_BENCH_JSON:-}"
[ "$(id -u)" = 0 ] || { echo "benches/docker.sh needs root" >&2; exit 1; }
if ! command -v dockerd >/dev/null || ! [ -x /usr/bin/docker ] || ! [ -x /bin/busybox ]; then
  echo "docker suite: dockerd, /usr/bin/docker or busybox-static missing: not measured"
  exit 0
fi

tag="pbd$$"
work="$(mktemp -d /tmp/pier-bench-docker.XXXXXX)"
export DOCKER_HOST="unix://$work/docker.sock"
docker=/usr/bin/docker  # Debian's client, matching its daemon
in_ns() { nsenter --net="/run/netns/$tag" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
stats() { # JSON numbers on stdin, one per line -> {median, min, max, samples}
  jq -s 'if length == 0 then null else (sort) as $s | {median: (if ($s | length) % 2 == 1
    then $s[($s | length) / 2 | floor] else ($s[($s | length) / 2 - 1] + $s[($s | length) / 2]) / 2 end),
    min: $s[0], max: $s[-1], samples: .} end'
}
cleanup() {
  if [ -S "$work/docker.sock" ]; then
    { $docker ps -aq 2>/dev/null || true; } | xargs -r $docker rm -f >/dev/null 2>&1 || true
  fi
  if [ -f "$work/dockerd.pid" ]; then kill "$(cat "$work/dockerd.pid")" 2>/dev/null || true; fi
  for _ in $(seq 50); do pgrep -f "$work/docker.sock" >/dev/null || break; sleep 0.2; done
  ip netns del "$tag" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$tag"
in_ns ip link set lo up
in_ns dockerd --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
  -H "$DOCKER_HOST" --storage-driver vfs --containerd-namespace "$tag" \
  --containerd-plugins-namespace "$tag-plugins" >"$work/dockerd.log" 2>&1 &
for _ in $(seq 150); do $docker info >/dev/null 2>&1 && break; sleep 0.2; done
$docker info >/dev/null 2>&1 || { tail -5 "$work/dockerd.log" >&2; echo "dockerd did not start" >&2; exit 1; }
version="$($docker version --format '{{.Server.Version}}')"
echo "== Docker $version (dockerd of its own in namespace $tag)"

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
  until in_ns ping -c1 -W1 "$address" >/dev/null 2>&1; do :; done
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
veths() { in_ns ip -o link show type veth | wc -l; }
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
