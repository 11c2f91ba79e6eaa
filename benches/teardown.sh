#!/usr/bin/env bash
# Bulk teardown: N Endpoints attached through `pier up`, then all deleted at once, timed until no
# veth of theirs is left on the node, until their namespaces are gone and until the API has none
# left (every finalizer done: the node's after the veth is gone, then the operator's release of
# the address). Then `pier down` with N attached. Called by benches/run.sh (suite `teardown`);
# runs alone too:
#   sudo PIER_BENCH_TEARDOWN_SIZE=500 PIER_BENCH_TEARDOWN_RUNS=3 PIER_BENCH_JSON=/tmp/teardown.json benches/teardown.sh
# Env: PIER_BENCH_TEARDOWN_SIZE (Endpoints per round, default 500), PIER_BENCH_TEARDOWN_RUNS
# (rounds per way of deleting, default 1), PIER_BIN (default target/release/pier), PIER_BENCH_JSON,
# PIER_BENCH_TEARDOWN_LOG (keep pier up's log there).
#
# Two ways of deleting, alternating round by round: one DELETE of the collection (what the API
# offers to delete "at once"), and `kubectl delete pep -l ...` (what a user types: kubectl lists
# them and sends one DELETE per Endpoint). The clock starts when the request (or kubectl) starts;
# the node's veths are counted every 20 ms (`ip -o link show type veth` in the node's namespace),
# so a figure over-counts by at most one poll.
#
# `pier up` runs with --resync-seconds 3600: a full reconcile also collects the veths of deleted
# Endpoints (in one request), and one falling into a round would make it look faster than the
# detach path alone, which is what is timed here.
#
# Everything runs in namespaces made here (`pbt<pid>-...`): the node and the named namespaces
# Pier creates for the Endpoints; all removed at the end, on failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/pier-up.sh
. benches/pier-up.sh

size="${PIER_BENCH_TEARDOWN_SIZE:-500}"
runs="${PIER_BENCH_TEARDOWN_RUNS:-1}"
pier="$(realpath "${PIER_BIN:-target/release/pier}")"
json_out="${PIER_BENCH_JSON:-}"
[ "$(id -u)" = 0 ] || { echo "benches/teardown.sh needs root (pier up)" >&2; exit 1; }
[ -x "$pier" ] || { echo "$pier not built (cargo build --release -p pier)" >&2; exit 1; }

tag="pbt$$"
node="$tag-node"
work="$(mktemp -d /tmp/pier-bench-teardown.XXXXXX)"
data="$work/data"
up_pid=""
ns="default"
net="$tag-net"
subnet_prefix="10.232"
poll_s=0.02

cleanup() {
  local rc=$?
  set +e
  pier_up_cleanup "$rc" teardown "$node" "${PIER_BENCH_TEARDOWN_LOG:-}"
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { echo "$EPOCHREALTIME"; }
# CPU seconds used so far by pier up (user + system), and by the whole machine (busy, total).
hz="$(getconf CLK_TCK)"
up_cpu() { awk -v hz="$hz" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$up_pid/stat"; }
machine_cpu() { awk -v hz="$hz" '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i;
  printf "%.3f %.3f", (t - $5 - $6) / hz, t / hz }' /proc/stat; }
s_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
veths() { ip -n "$node" -o link show type veth 2>/dev/null | wc -l; }
round_netns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -c "^$tag-r$1-" || true; }

start_up() {
  up_cmd=("$pier" up --data-dir "$data" --listen 127.0.0.1:0 --node-netns "/run/netns/$node"
    --node-name node-a --resync-seconds 3600)
  pier_up_start "$work/up.out" "$work/up.log" "${up_cmd[@]}"
  pier_api_client "$data/kubeconfig" "$work"
}
ep_url() { echo "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints/$1?fieldManager=pier-bench&force=true"; }
ep_json() { # name address round
  printf '{"apiVersion":"pier.dev/v1alpha1","kind":"Endpoint","metadata":{"name":"%s","namespace":"%s","labels":{"pier-bench":"%s"}},"spec":{"network":"%s","target":{"netns":{"name":"%s"}},"ipv4Address":"%s"}}' \
    "$1" "$ns" "$3" "$net" "$1" "$2"
}
count_eps() { # label value
  api "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints?labelSelector=pier-bench%3D$1" | jq '.items | length'
}
attached_eps() { # label value
  api "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints?labelSelector=pier-bench%3D$1" \
    | jq '[.items[] | select(any(.status.conditions[]?; .type == "Attached" and .status == "True"))] | length'
}

# create_round ROUND: N Endpoints by parallel server-side applies, waits until all are attached.
create_round() {
  local round="$1" label="$tag-r$1" i addr name
  : >"$work/curl.cfg"
  for i in $(seq 0 $((size - 1))); do
    addr="$subnet_prefix.$((10 + i / 250)).$((i % 250 + 2))"
    name="$label-$i"
    ep_json "$name" "$addr" "$label" >"$work/ep-$i.json"
    {
      [ "$i" = 0 ] || echo 'next'
      echo "url = \"$(ep_url "$name")\""
      echo 'request = "PATCH"'
      echo 'header = "Content-Type: application/apply-patch+yaml"'
      echo "header = \"Authorization: Bearer $token\""
      echo "cacert = \"$work/ca.pem\""
      echo "data-binary = \"@$work/ep-$i.json\""
      echo 'output = "/dev/null"'
      echo 'fail'
    } >>"$work/curl.cfg"
  done
  curl -sS -Z --parallel-max 16 -K "$work/curl.cfg" >"$work/curl.log" 2>&1 \
    || { echo "some applies failed:" >&2; cat "$work/curl.log" >&2; exit 1; }
  for _ in $(seq 600); do
    [ "$(attached_eps "$label")" -ge "$size" ] && [ "$(veths)" -ge "$size" ] && return 0
    sleep 0.2
  done
  echo "round $round: not all $size Endpoints attached after 120 s" >&2
  exit 1
}

# delete_round ROUND HOW: deletes the round's Endpoints at once; prints one JSON object.
delete_round() {
  local round="$1" how="$2" label="$tag-r$1" t0 t_veths="" t_netns="" t_api="" t_cmd="" pid left
  local progress="" cpu0 busy0 total0 cpu1 busy1 total1
  cpu0="$(up_cpu)"; read -r busy0 total0 <<<"$(machine_cpu)"
  t0="$(now)"
  if [ "$how" = collection ]; then
    api -X DELETE -o /dev/null \
      "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints?labelSelector=pier-bench%3D$label" &
  else
    kc delete pep -n "$ns" -l "pier-bench=$label" --wait=false >/dev/null &
  fi
  pid=$!
  while :; do
    if [ -z "$t_cmd" ] && ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" || { echo "the delete failed" >&2; exit 1; }
      t_cmd="$(now)"
    fi
    left="$(veths)"
    progress="$progress[$(s_between "$t0" "$(now)"),$left],"
    [ -z "$t_veths" ] && [ "$left" = 0 ] && t_veths="$(now)"
    [ -z "$t_netns" ] && [ "$(round_netns "$round")" = 0 ] && t_netns="$(now)"
    if [ -n "$t_veths" ] && [ -n "$t_netns" ] && [ -n "$t_cmd" ] && [ "$(count_eps "$label")" = 0 ]; then
      t_api="$(now)"
      cpu1="$(up_cpu)"; read -r busy1 total1 <<<"$(machine_cpu)"
      break
    fi
    if awk -v a="$t0" -v b="$(now)" 'BEGIN { exit !((b - a) > 120) }'; then
      echo "round $round: not gone after 120 s (veths left: $(veths))" >&2
      exit 1
    fi
    sleep "$poll_s"
  done
  jq -nc --arg how "$how" --argjson n "$size" --argjson veths "$(s_between "$t0" "$t_veths")" \
    --argjson netns "$(s_between "$t0" "$t_netns")" --argjson api "$(s_between "$t0" "$t_api")" \
    --argjson cmd "$(s_between "$t0" "$t_cmd")" --argjson progress "[${progress%,}]" \
    --argjson up_cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.3f", b - a }')" \
    --argjson busy "$(awk -v b0="$busy0" -v b1="$busy1" -v a0="$total0" -v a1="$total1" \
      'BEGIN { printf "%.2f", (b1 - b0) / (a1 - a0) }')" \
    --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" \
    '{how: $how, endpoints: $n, no_veth_left_s: $veths, no_netns_left_s: $netns,
      api_empty_s: $api, delete_command_s: $cmd, pier_up_cpu_s: $up_cpu, machine_busy: $busy,
      loadavg_at_end: $loadavg, veths_left: $progress}'
}

# --- pier up in its own node namespace, one Network (no anchor: "no veth left" means none)
ip netns add "$node"
ip netns exec "$node" ip link set lo up
start_up
echo "== teardown: ${up_cmd[*]}"
api -X PATCH -H 'Content-Type: application/apply-patch+yaml' -o /dev/null \
  --data-binary "{\"apiVersion\":\"pier.dev/v1alpha1\",\"kind\":\"Network\",\"metadata\":{\"name\":\"$net\"},\"spec\":{\"subnet\":\"$subnet_prefix.0.0/16\",\"gateway\":\"$subnet_prefix.0.1\"}}" \
  "$server/apis/pier.dev/v1alpha1/networks/$net?fieldManager=pier-bench&force=true"

rounds_json="[]"
round=0
for _ in $(seq "$runs"); do
  for how in collection kubectl; do
    round=$((round + 1))
    echo "== teardown: round $round, $size Endpoints, deleted by $how"
    create_round "$round"
    sleep 2 # settle: status writes, DNS
    r="$(delete_round "$round" "$how")"
    echo "   $(jq -c 'del(.veths_left)' <<<"$r")"
    rounds_json="$(jq -c --argjson r "$r" '. + [$r]' <<<"$rounds_json")"
  done
done

# --- pier down with N attached: stop pier up, then time `pier down` (links and namespaces)
round=$((round + 1))
echo "== teardown: pier down with $size Endpoints attached"
create_round "$round"
sleep 2
pier_up_stop
t0="$(now)"
"$pier" down --data-dir "$data" --node-netns "/run/netns/$node" >"$work/down.log" 2>&1 \
  || { echo "pier down failed:" >&2; cat "$work/down.log" >&2; exit 1; }
down_s="$(s_between "$t0" "$(now)")"
left_veths="$(veths)"; left_netns="$(round_netns "$round")"
echo "   pier down: $down_s s; veths left $left_veths, namespaces left $left_netns"
[ "$left_veths" = 0 ] && [ "$left_netns" = 0 ] || { echo "pier down left objects behind" >&2; exit 1; }

if [ -n "$json_out" ]; then
  jq -n --argjson rounds "$rounds_json" --argjson n "$size" --argjson runs "$runs" \
    --argjson down "$down_s" --arg pier_version "$("$pier" --version 2>/dev/null || echo unknown)" \
    --arg poll "$poll_s" '
    def st: sort | if length == 0 then null else
      {median: (if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end),
       min: .[0], max: .[-1], samples: .} end;
    {bench: "teardown", endpoints: $n, runs_per_way: $runs, poll_s: ($poll | tonumber), pier: $pier_version,
     rounds: $rounds,
     no_veth_left_s: {collection: ([$rounds[] | select(.how == "collection") | .no_veth_left_s] | st),
                      kubectl: ([$rounds[] | select(.how == "kubectl") | .no_veth_left_s] | st)},
     api_empty_s: {collection: ([$rounds[] | select(.how == "collection") | .api_empty_s] | st),
                   kubectl: ([$rounds[] | select(.how == "kubectl") | .api_empty_s] | st)},
     pier_down_s: $down,
     commands: {pier_up: "pier up --data-dir DIR --listen 127.0.0.1:0 --node-netns /run/netns/NODE --node-name node-a --resync-seconds 3600",
                create: "curl -Z --parallel-max 16: one server-side apply per Endpoint (its own named netns, a static address)",
                collection: "curl -X DELETE .../namespaces/default/endpoints?labelSelector=pier-bench=ROUND",
                kubectl: "kubectl delete pep -n default -l pier-bench=ROUND --wait=false",
                veths: "ip -n NODE -o link show type veth | wc -l (every 20 ms)",
                pier_down: "pier down --data-dir DIR --node-netns /run/netns/NODE (pier up stopped first)"}}' >"$json_out"
  echo "   wrote $json_out"
fi
