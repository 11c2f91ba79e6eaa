#!/usr/bin/env bash
# Local mode: `pier up` as a user runs it, driven over its HTTPS API, measured from the
# node's network namespace with ping. Called by benches/run.sh (suite `local`); runs alone too:
#   sudo PIER_BENCH_RUNS=10 PIER_BENCH_SCALE=100 PIER_BENCH_JSON=/tmp/local.json benches/local.sh
# Env: PIER_BENCH_RUNS (apply->ping repetitions, default 10), PIER_BENCH_SCALE (comma list of
# "applied at once" sizes, default 100; up to 2000), PIER_BENCH_AT_ONCE_RUNS (repetitions of each
# size, default 1: every one is a sample in the JSON, the row's figures are their median),
# PIER_BENCH_PER_NETWORK (endpoints per Network in the N-at-once phases, default 1000: a Linux
# bridge has at most 1024 ports), PIER_BENCH_KUBECTL (1: also time `kubectl apply`, default 1),
# PIER_BIN (default target/release/pier), PIER_BENCH_JSON (where the figures go).
#
# Everything runs in namespaces made here: the node is `pbl<pid>-node` (passed to `pier up
# --node-netns`), Endpoints target named namespaces `pbl<pid>-<n>` that Pier creates on first use.
# All of them, `pier up` and its data directory are removed at the end, on failure too.
#
# Measuring from the node (the host side of the bridge) without artefacts of the measurement:
# - ping is started before the apply, so an INCOMPLETE neighbour entry exists for the address; by
#   default the kernel re-sends ARP for it only every second, which would add up to 1 s that is not
#   Pier's. The bench's bridge gets retrans_time_ms=1 (ARP probe every ms while unresolved) and a
#   high mcast_solicit for the apply->ping runs; the queued echo is sent the moment the endpoint
#   answers ARP, so the reply time is when the endpoint became reachable (to within ~1 ms).
# - one anchor Endpoint per network stays attached, so its bridge has carrier throughout (a bridge
#   without ports has none, and its first port coming up would flush the neighbour table).
# - the kernel's neighbour (ARP) table is one for all namespaces, at most gc_thresh3 entries (1024
#   by default); N endpoints answering the node need about 2N (one on the node's side, one for the
#   gateway in each endpoint's namespace). When the largest N needs more than the machine allows,
#   the bench raises net.ipv4.neigh.default.gc_thresh2/3 (to 2N+512 / 4N, what a node meant for
#   that many containers needs whatever the runtime) for the run and puts the old values back at
#   the end; the JSON records both.
# - for the N-at-once runs, fping rounds over the addresses not answering yet (1 ARP probe each,
#   20 ms), repeated until all answer; the clock stops at the end of the round in which the last
#   one answered (so it over-counts by at most that round, whose length is recorded). A round
#   probes only the addresses whose Endpoint the node agent reports `Attached` (a watch of the
#   Endpoints, started before the applies), as a user waits for a container before using it:
#   an ARP request for an address nobody holds yet is flooded to every port of its bridge and
#   handled in every endpoint's namespace, repeated each round until it is attached. With 2,000
#   pending that probing (N^2 frames) took about a third of the machine's CPU away from what is
#   measured (benches/notes/local.md). The ping still decides: an Endpoint reported attached
#   before it answers keeps being probed, and one reported late only makes the figure larger.
set -euo pipefail
# Times are read and computed with a decimal point, whatever the caller's locale.
export LC_NUMERIC=C
cd "$(dirname "$0")/.."
# shellcheck source=benches/pier-up.sh
. benches/pier-up.sh

runs="${PIER_BENCH_RUNS:-10}"
scales="${PIER_BENCH_SCALE:-100}"
at_once_runs="${PIER_BENCH_AT_ONCE_RUNS:-1}"
with_kubectl="${PIER_BENCH_KUBECTL:-1}"
pier="$(realpath "${PIER_BIN:-target/release/pier}")"
json_out="${PIER_BENCH_JSON:-}"
[ "$(id -u)" = 0 ] || { echo "benches/local.sh needs root (pier up)" >&2; exit 1; }
[ -x "$pier" ] || { echo "$pier not built (cargo build --release -p pier)" >&2; exit 1; }

tag="pbl$$"
node="$tag-node"
work="$(mktemp -d /tmp/pier-bench-local.XXXXXX)"
data="$work/data"
up_pid=""
ns="default"
net="$tag-net"
subnet_prefix="10.231"

arp_thresh_saved=""
cleanup() {
  local rc=$?
  set +e
  pier_up_cleanup "$rc" local "$node" "${PIER_BENCH_LOCAL_LOG:-}"
  # shellcheck disable=SC2086 # two words: thresh2 thresh3
  [ -n "$arp_thresh_saved" ] && set -- $arp_thresh_saved \
    && sysctl -q -w "net.ipv4.neigh.default.gc_thresh2=$1" "net.ipv4.neigh.default.gc_thresh3=$2"
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { echo "$EPOCHREALTIME"; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) * 1000 }'; }
# {median, min, max} of the numbers on stdin (one a line) as JSON.
stats() {
  jq -s 'sort | if length == 0 then null else
    {median: (if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end),
     min: .[0], max: .[-1], samples: .} end'
}
# CPU seconds used so far by pier up (user + system), and by the whole machine (busy, total).
hz="$(getconf CLK_TCK)"
up_cpu() { awk -v hz="$hz" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$up_pid/stat"; }
machine_cpu() { awk -v hz="$hz" '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i;
  printf "%.3f %.3f", (t - $5 - $6) / hz, t / hz }' /proc/stat; }
# CPU seconds per thread name of pier up (tokio workers: API server, operator, agent; blocking
# pool: kernel work), as a JSON object.
threads_cpu() {
  for t in /proc/"$up_pid"/task/*; do
    [ -r "$t/stat" ] && sed 's/^[0-9]* (\(.*\)) /\1\t/' "$t/stat" 2>/dev/null
  done | awk -F'\t' -v hz="$hz" '{ split($2, f, " "); cpu[$1] += (f[12] + f[13]) / hz }
    END { printf "{"; sep = ""; for (c in cpu) { printf "%s\"%s\": %.3f", sep, c, cpu[c]; sep = ", " }; printf "}" }'
}
# How often the kernel's neighbour (ARP) table was full so far: it is one table for all network
# namespaces, at most net.ipv4.neigh.default.gc_thresh3 entries (1024 by default), and at N
# endpoints it holds N entries on the node's side plus one in each endpoint's namespace.
arp_table_fulls() {
  local n=0 f
  if [ -r /proc/net/stat/arp_cache ]; then
    for f in $(awk 'NR > 1 { print $13 }' /proc/net/stat/arp_cache); do n=$((n + 16#$f)); done
  fi
  echo "$n"
}
rss_json() {
  awk -v n="$1" '/^VmRSS:/ {rss = $2} /^VmHWM:/ {hwm = $2}
    END { printf "{\"endpoints\": %d, \"vmrss_mib\": %.1f, \"vmhwm_mib\": %.1f}\n", n, rss / 1024, hwm / 1024 }' \
    "/proc/$up_pid/status"
}

# --- the neighbour table's limit for the largest N (see the top of this file)
largest=0
for n in ${scales//,/ }; do [ "$n" -gt "$largest" ] && largest="$n"; done
arp_thresh2_machine="$(sysctl -n net.ipv4.neigh.default.gc_thresh2)"
arp_thresh3_machine="$(sysctl -n net.ipv4.neigh.default.gc_thresh3)"
if [ $((2 * largest + 512)) -gt "$arp_thresh3_machine" ]; then
  arp_thresh_saved="$arp_thresh2_machine $arp_thresh3_machine"
  sysctl -q -w "net.ipv4.neigh.default.gc_thresh2=$((2 * largest + 512))" \
    "net.ipv4.neigh.default.gc_thresh3=$((4 * largest))"
  echo "== local: neighbour table limit raised for $largest endpoints: gc_thresh2/3 $arp_thresh2_machine/$arp_thresh3_machine -> $((2 * largest + 512))/$((4 * largest)) (restored at the end)"
fi

# --- pier up in its own node namespace
ip netns add "$node"
ip netns exec "$node" ip link set lo up
up_cmd=("$pier" up --no-merge-kubeconfig --data-dir "$data" --listen 127.0.0.1:0 --node-netns "/run/netns/$node"
  --node-name node-a --resync-seconds 10)
echo "== local: ${up_cmd[*]}"
pier_up_start "$work/up.out" "$work/up.log" "${up_cmd[@]}"
pier_api_client "$data/kubeconfig" "$work"
ep_url() { echo "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints/$1?fieldManager=pier-bench&force=true"; }
ep_json() { # name address [network]
  printf '{"apiVersion":"pier.dev/v1alpha1","kind":"Endpoint","metadata":{"name":"%s","namespace":"%s","labels":{"pier-bench":"%s"}},"spec":{"network":"%s","target":{"netns":{"name":"%s"}},"ipv4Address":"%s"}}' \
    "$1" "$ns" "$tag" "${3:-$net}" "$1" "$2"
}
apply_ep() { # name address: server-side apply, one request; prints curl's "pretransfer total" (s)
  api -X PATCH -H 'Content-Type: application/apply-patch+yaml' --data-binary "$(ep_json "$1" "$2")" \
    -o /dev/null -w '%{time_pretransfer} %{time_total}' "$(ep_url "$1")"
}
count_eps() {
  api "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints?labelSelector=pier-bench%3D$tag" | jq '.items | length'
}
delete_eps() { # N: all of this run's Endpoints but the anchors; waits until they are gone
  local wait_s=$(( ${1:-0} / 10 > 120 ? ${1:-0} / 10 : 120 ))
  api -X DELETE -o /dev/null \
    "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints?labelSelector=pier-bench%3D$tag,pier-bench-anchor!%3Dyes"
  for _ in $(seq $((wait_s * 10))); do [ "$(count_eps)" -le "$networks" ] && return 0; sleep 0.1; done
  echo "Endpoints not gone after $wait_s s" >&2; return 1
}
sleep 2
rss0="$(rss_json 0)"
echo "   RSS at 0 endpoints: $rss0"

# --- the Networks, each with its anchor Endpoint
# A Linux bridge has at most 1024 ports (BR_MAX_PORTS), so one network holds at most about a
# thousand endpoints, with Docker as with Pier: N at once above that is spread over networks of
# per_network endpoints each, 10.231.0.0/16, 10.232.0.0/16, ... ($net, $net-1, ...).
per_network="${PIER_BENCH_PER_NETWORK:-1000}"
networks=$(( (largest + per_network - 1) / per_network )); [ "$networks" -ge 1 ] || networks=1
network_name() { if [ "$1" = 0 ]; then echo "$net"; else echo "$net-$1"; fi; }
network_prefix() { echo "10.$((231 + $1))"; }
bridges=()
for k in $(seq 0 $((networks - 1))); do
  name="$(network_name "$k")"; prefix="$(network_prefix "$k")"; anchor="$tag-anchor$([ "$k" = 0 ] || echo "-$k")"
  api -X PATCH -H 'Content-Type: application/apply-patch+yaml' -o /dev/null \
    --data-binary "{\"apiVersion\":\"pier.dev/v1alpha1\",\"kind\":\"Network\",\"metadata\":{\"name\":\"$name\"},\"spec\":{\"subnet\":\"$prefix.0.0/16\",\"gateway\":\"$prefix.0.1\"}}" \
    "$server/apis/pier.dev/v1alpha1/networks/$name?fieldManager=pier-bench&force=true"
  api -X PATCH -H 'Content-Type: application/apply-patch+yaml' -o /dev/null \
    --data-binary "$(ep_json "$anchor" "$prefix.0.2" "$name" | jq -c '.metadata.labels["pier-bench-anchor"] = "yes"')" \
    "$(ep_url "$anchor")"
  for _ in $(seq 60); do
    ip netns exec "$node" ping -n -q -c1 -W 0.5 "$prefix.0.2" >/dev/null 2>&1 && break
    sleep 0.5
  done
  ip netns exec "$node" ping -n -q -c1 -W 1 "$prefix.0.2" >/dev/null \
    || { echo "anchor endpoint $prefix.0.2 never answered" >&2; exit 1; }
  bridge="$(ip -n "$node" -o -4 addr show | awk -v a="$prefix.0.1/16" '$4 == a {print $2}')"
  [ -n "$bridge" ] || { echo "no bridge with $prefix.0.1/16 in $node" >&2; exit 1; }
  bridges+=("$bridge")
done
neigh() { # retrans_time_ms mcast_solicit, on every bridge of the run
  local b
  for b in "${bridges[@]}"; do
    ip netns exec "$node" sysctl -q "net.ipv4.neigh.$b.retrans_time_ms=$1" "net.ipv4.neigh.$b.mcast_solicit=$2"
  done
}

# --- apply -> ping, one Endpoint at a time (a static address: the clock covers allocation too)
neigh 1 30000
ping_cmd="ip netns exec $node ping -n -D -c1 -w5 -i0.002 ADDRESS"
curl_cmd="curl -X PATCH -H 'Content-Type: application/apply-patch+yaml' --cacert CA -H 'Authorization: Bearer TOKEN' --data-binary ENDPOINT_JSON $server/apis/pier.dev/v1alpha1/namespaces/default/endpoints/NAME?fieldManager=pier-bench&force=true"
kubectl_cmd="kubectl --kubeconfig $kubeconfig apply -f - (one Endpoint, client-side apply)"
: >"$work/api.ms"; : >"$work/start.ms"; : >"$work/request.ms"; : >"$work/kubectl.ms"
: >"$work/kubectl-process.ms"
failures=0
# how name address -> "from_sent_ms from_start_ms request_ms" (api) or "from_start_ms" (kubectl),
# or "fail". With curl, "sent" is the process start plus curl's own time_pretransfer (connect and
# TLS handshake done, request about to go): a little late, since curl's clock starts after its
# own initialisation, so the latency from it is if anything over-counted.
one_run() {
  local how="$1" name="$2" addr="$3" p t0 reply timing=""
  ip netns exec "$node" ping -n -D -c1 -w5 -i0.002 "$addr" >"$work/ping.out" 2>&1 &
  p=$!
  sleep 0.1 # ping runs, the neighbour entry is INCOMPLETE
  t0="$(now)"
  if [ "$how" = api ]; then
    timing="$(apply_ep "$name" "$addr")"
  else
    ep_json "$name" "$addr" | kc apply -f - >/dev/null
    echo "$(ms_between "$t0" "$(now)")" >>"$work/kubectl-process.ms"
  fi
  if ! wait "$p"; then echo fail; return; fi
  reply="$(sed -n 's/^\[\([0-9.]*\)\] [0-9]* bytes from.*/\1/p' "$work/ping.out" | head -1)"
  [ -n "$reply" ] || { echo fail; return; }
  if [ "$how" = api ]; then
    awk -v t0="$t0" -v r="$reply" -v pre="${timing% *}" -v total="${timing#* }" \
      'BEGIN { printf "%.2f %.2f %.2f\n", (r - t0 - pre) * 1000, (r - t0) * 1000, (total - pre) * 1000 }'
  else
    ms_between "$t0" "$reply"
  fi
}
echo "== local: apply -> ping, $runs runs"
for i in $(seq "$runs"); do
  r="$(one_run api "$tag-a$i" "$subnet_prefix.1.$i")"
  if [ "$r" = fail ]; then failures=$((failures + 1)); else
    read -r sent start request <<<"$r"
    echo "$sent" >>"$work/api.ms"; echo "$start" >>"$work/start.ms"; echo "$request" >>"$work/request.ms"
  fi
  if [ "$with_kubectl" = 1 ]; then
    r="$(one_run kubectl "$tag-k$i" "$subnet_prefix.2.$i")"
    if [ "$r" = fail ]; then failures=$((failures + 1)); else echo "$r" >>"$work/kubectl.ms"; fi
  fi
  echo "   run $i: API $(tail -1 "$work/api.ms") ms from the request sent, $(tail -1 "$work/start.ms") ms from curl's start$([ "$with_kubectl" = 1 ] && echo ", kubectl $(tail -1 "$work/kubectl.ms") ms")"
done
api_stats="$(stats <"$work/api.ms")"
request_stats="$(stats <"$work/request.ms")"
start_stats="$(stats <"$work/start.ms")"
kubectl_process_stats="$(stats <"$work/kubectl-process.ms")"
kubectl_stats="$(stats <"$work/kubectl.ms")"
echo "   apply->ping median $(jq .median <<<"$api_stats") ms (kubectl: $(jq .median <<<"$kubectl_stats") ms), failures $failures"
delete_eps

# --- N Endpoints at once: parallel server-side applies, fping until every address answers
neigh 20 1
if command -v fping >/dev/null; then
  pinger="fping"
  probe_cmd="nsenter --net=/run/netns/$node fping -a -r0 -t50 -i0 ADDRESSES_ATTACHED_AND_NOT_ANSWERING_YET"
else
  pinger="ping"
  probe_cmd="ip netns exec $node ping -n -q -c1 -W0.05 ADDRESS (32 in parallel, per address attached and not answering yet)"
fi
probe() { # addresses file -> prints those answering
  if [ "$pinger" = fping ]; then
    # nsenter enters the node's network namespace only: `ip netns exec` also makes a mount
    # namespace and remounts /sys for every round, work of the measurement, not of Pier.
    nsenter --net="/run/netns/$node" fping -a -r0 -t50 -i0 -f "$1" 2>/dev/null || true
  else
    xargs -P 32 -I{} sh -c "ip netns exec '$node' ping -n -q -c1 -W0.05 {} >/dev/null 2>&1 && echo {}" <"$1" || true
  fi
}
scale_json="[]"
rss_list="[$rss0]"
base=10
give_up_s="${PIER_BENCH_AT_ONCE_TIMEOUT:-120}"
[[ "$give_up_s" =~ ^[0-9]+$ ]] || { echo "PIER_BENCH_AT_ONCE_TIMEOUT: whole seconds, not '$give_up_s'" >&2; exit 2; }
# at_once N REP: one phase of N Endpoints applied at once (repetition REP), its sample appended
# to $work/samples as one JSON line.
at_once() {
  local n="$1" rep="$2" i addr name
  echo "== local: $n Endpoints at once (repetition $rep of $at_once_runs)"
  : >"$work/curl.cfg"; : >"$work/pending"; : >"$work/addresses"
  # Rows of each /16 for this phase's addresses (the previous phase's were released when its
  # Endpoints were deleted, so wrapping around reuses free ones).
  local rows=$(( ((n < per_network ? n : per_network) + 249) / 250 )) k j
  [ $((base + rows)) -le 250 ] || base=10
  for i in $(seq 0 $((n - 1))); do
    k=$((i / per_network)); j=$((i % per_network))
    addr="$(network_prefix "$k").$((base + j / 250)).$((j % 250 + 2))"
    name="$tag-s$n-r$rep-$i"
    ep_json "$name" "$addr" "$(network_name "$k")" >"$work/ep-$i.json"
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
    echo "$addr" >>"$work/pending"
    echo "$name $addr" >>"$work/addresses"
  done
  base=$((base + rows))
  # Each phase starts with the node's neighbour entries of earlier phases gone (as on a node
  # whose deleted containers' entries have been collected), so phases do not add up in the
  # kernel's shared ARP table.
  ip -n "$node" neigh flush all >/dev/null 2>&1 || true
  fulls0="$(arp_table_fulls)"
  cpu0="$(up_cpu)"; read -r busy0 total0 <<<"$(machine_cpu)"; threads0="$(threads_cpu)"
  # The names of the Endpoints the node agent reports attached, as they come (one watch from
  # before the applies; its initial ADDED events are the anchors and whatever is left).
  : >"$work/attached"
  # curl itself in the background, not `api`: a function run with `&` is a subshell around
  # curl, and killing that left curl streaming (and jq decoding) through every later phase.
  # grep passes jq only the events that mention the condition at all (from the node's first
  # report on), not every finalizer and allocation write before it: jq decoding them all took
  # 3% of the machine during the 2,000 phase (1.5% now).
  { "${api_curl[@]}" -N "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints?watch=true" 2>/dev/null &
    echo $! >"$work/watch.pid"; wait; } |
    grep --line-buffered -F '"Attached"' |
    jq --unbuffered -r 'select(.type == "ADDED" or .type == "MODIFIED") | .object
      | select(any(.status.conditions[]?; .type == "Attached" and .status == "True"))
      | .metadata.name' >"$work/attached" &
  t0="$(now)"
  curl -sS -Z --parallel-max 16 -K "$work/curl.cfg" 2>"$work/curl.log" &
  curl_pid=$!
  # A round forks three times (two awks and fping; and sleep when nothing is attached yet): the
  # measuring side's processes compete with pier up for the two CPUs, and rounds with a fork per
  # step (time arithmetic, sort, comm, mv, wc) took 10% of the machine during the 2,000 phase
  # (bash, awk and those tools, in a profile; 5% now). Times are kept in microseconds from
  # $EPOCHREALTIME (always six decimals after a point: LC_NUMERIC=C) for the shell's arithmetic.
  local t0_us="${t0/./}" r0_us r1_us pending="$work/pending" pending_next="$work/pending.next" left_n swap
  rounds=0; last_round_ms=0; t_done=""; t_requests=""; progress=""
  while :; do
    r0="$EPOCHREALTIME"; r0_us="${r0/./}"
    # The pending addresses of the Endpoints attached so far.
    awk 'FILENAME ~ /attached$/ { attached[$1] = 1; next }
      FILENAME ~ /addresses$/ { if ($1 in attached) addr[$2] = 1; next }
      ($1 in addr)' "$work/attached" "$work/addresses" "$pending" >"$work/probed"
    [ -s "$work/probed" ] || sleep 0.02
    probe "$work/probed" >"$work/alive"
    r1="$EPOCHREALTIME"; r1_us="${r1/./}"
    rounds=$((rounds + 1))
    printf -v last_round_ms '%d.%02d' $(((r1_us - r0_us) / 1000)) $(((r1_us - r0_us) % 1000 / 10))
    # What answered leaves the pending list; the count of what is left.
    left_n="$(awk -v out="$pending_next" 'FILENAME ~ /alive$/ { alive[$1] = 1; next }
      !($1 in alive) { print > out; n++ } END { printf "" > out; print n + 0 }' "$work/alive" "$pending")"
    swap="$pending"; pending="$pending_next"; pending_next="$swap"
    printf -v progress '%s[%d.%03d,%d],' "$progress" $(((r1_us - t0_us) / 1000000)) \
      $(((r1_us - t0_us) % 1000000 / 1000)) $((n - left_n))
    if [ -z "$t_requests" ] && ! kill -0 "$curl_pid" 2>/dev/null; then
      wait "$curl_pid" || { echo "some applies failed:" >&2; cat "$work/curl.log" >&2; exit 1; }
      t_requests="$r1"
    fi
    if [ "$left_n" = 0 ]; then t_done="$r1"; break; fi
    if (( r1_us - t0_us > give_up_s * 1000000 )); then break; fi
  done
  t_end="$(now)"; cpu1="$(up_cpu)"; read -r busy1 total1 <<<"$(machine_cpu)"; threads1="$(threads_cpu)"
  kill "$(cat "$work/watch.pid")" 2>/dev/null || true
  arp_fulls=$(($(arp_table_fulls) - fulls0))
  [ -n "$t_requests" ] || { wait "$curl_pid" || true; t_requests="$(now)"; }
  # Over the phase: CPUs pier up kept busy, and the share of the machine's CPUs that were busy.
  cpu_json="$(awk -v t0="$t0" -v t1="$t_end" -v c0="$cpu0" -v c1="$cpu1" -v b0="$busy0" -v b1="$busy1" \
    -v a0="$total0" -v a1="$total1" 'BEGIN { printf "{\"seconds\": %.3f, \"pier_up_cpu_s\": %.3f, \"pier_up_cpus\": %.2f, \"machine_busy\": %.2f}",
      t1 - t0, c1 - c0, (c1 - c0) / (t1 - t0), (b1 - b0) / (a1 - a0) }')"
  cpu_json="$(jq -c --argjson a "$threads0" --argjson b "$threads1" \
    '.pier_up_threads_cpu_s = ($b | with_entries(.value = ((.value - ($a[.key] // 0)) * 1000 | round / 1000)))' <<<"$cpu_json")"
  left="$left_n"
  all_s="null"; [ -n "$t_done" ] && all_s="$(awk -v a="$t0" -v b="$t_done" 'BEGIN { printf "%.3f", b - a }')"
  req_s="$(awk -v a="$t0" -v b="$t_requests" 'BEGIN { printf "%.3f", b - a }')"
  echo "   CPU over the phase: $cpu_json; ARP table full $arp_fulls times"
  echo "   all $n reachable after ${all_s} s (requests done by ${req_s} s, $rounds ping rounds, last ${last_round_ms} ms, $left not answering)"
  # Settle (status writes, DNS), then memory with these endpoints attached (first repetition).
  sleep 3
  if [ "$rep" = 1 ]; then
    rss_n="$(rss_json "$n")"
    echo "   RSS at $n endpoints: $rss_n"
    rss_list="$(jq -c --argjson r "$rss_n" '. + [$r]' <<<"$rss_list")"
  fi
  d0="$(now)"
  delete_eps "$n"
  del_s="$(awk -v a="$d0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')"
  echo "   deleted (Endpoints gone, finalizers done) in $del_s s"
  jq -nc --argjson n "$n" --argjson all "$all_s" --argjson req "$req_s" --argjson rounds "$rounds" \
    --argjson last "$last_round_ms" --argjson left "$left" --argjson del "$del_s" \
    --argjson progress "[${progress%,}]" --argjson cpu "$cpu_json" --argjson fulls "$arp_fulls" \
    --argjson thresh3 "$(sysctl -n net.ipv4.neigh.default.gc_thresh3)" \
    '{endpoints: $n, all_reachable_s: $all, requests_done_s: $req, ping_rounds: $rounds,
      last_round_ms: $last, not_reachable: $left, delete_all_s: $del,
      answering_after_s: $progress, cpu: $cpu,
      arp_table_full_events: $fulls, arp_gc_thresh3: $thresh3}' >>"$work/samples"
}
for n in ${scales//,/ }; do
  : >"$work/samples"
  for rep in $(seq "$at_once_runs"); do at_once "$n" "$rep"; done
  # The row: the median repetition's figures (by all_reachable_s, a run that never got there
  # counting as the slowest; of an even count the slower middle one), with every repetition's
  # sample beside them.
  scale_json="$(jq -sc --argjson rows "$scale_json" '
    (sort_by(.all_reachable_s == null, .all_reachable_s)) as $sorted
    | $rows + [$sorted[length / 2 | floor] + {
        repetitions: length,
        all_reachable_samples_s: map(.all_reachable_s),
        requests_done_samples_s: map(.requests_done_s),
        delete_all_samples_s: map(.delete_all_s),
        samples: .}]' "$work/samples")"
done
rss_final="$(rss_json 0)"

if [ -n "$json_out" ]; then
  jq -n --argjson runs "$runs" --argjson failures "$failures" \
    --argjson api "$api_stats" --argjson request "$request_stats" --argjson kubectl "$kubectl_stats" \
    --argjson start "$start_stats" --argjson kubectl_process "$kubectl_process_stats" \
    --argjson scale "$scale_json" --argjson rss "$rss_list" --argjson rss_end "$rss_final" \
    --arg up "pier up --data-dir DIR --listen 127.0.0.1:0 --node-netns /run/netns/NODE --node-name node-a --resync-seconds 10" \
    --arg ping "${ping_cmd//$node/NODE}" --arg curl "${curl_cmd//$server/https://127.0.0.1:PORT}" \
    --arg kubectl_cmd "${kubectl_cmd//$kubeconfig/DIR\/kubeconfig}" --arg probe "${probe_cmd//$node/NODE}" \
    --arg pinger "$pinger" --arg pier_version "$("$pier" --version 2>/dev/null || echo unknown)" \
    --argjson at_once_runs "$at_once_runs" --argjson thresh2 "$arp_thresh2_machine" \
    --argjson thresh3 "$arp_thresh3_machine" --argjson raised "$([ -n "$arp_thresh_saved" ] && echo true || echo false)" \
    --argjson per_network "$per_network" --argjson networks "$networks" \
    '{bench: "local", runs: $runs, failures: $failures, at_once_runs: $at_once_runs,
      at_once_networks: {count: $networks, endpoints_per_network: $per_network},
      arp_gc_thresh_machine: {gc_thresh2: $thresh2, gc_thresh3: $thresh3, raised_for_the_run: $raised},
      apply_to_ping_ms: $api, curl_start_to_ping_ms: $start, apply_request_ms: $request,
      kubectl_apply_to_ping_ms: $kubectl, kubectl_process_ms: $kubectl_process,
      at_once: $scale, rss: $rss, rss_after_delete: ($rss_end | .endpoints = 0),
      pinger: $pinger, pier: $pier_version,
      commands: {pier_up: $up, apply: $curl, ping: $ping, kubectl: $kubectl_cmd, at_once_probe: $probe,
                 at_once_apply: "curl -Z --parallel-max 16 -K CONFIG (one PATCH as above per Endpoint)",
                 rss: "grep -E \"VmRSS|VmHWM\" /proc/PID_OF_PIER_UP/status"}}' >"$json_out"
  echo "   wrote $json_out"
fi
