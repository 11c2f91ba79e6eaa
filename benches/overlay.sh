#!/usr/bin/env bash
# Overlay networks across three nodes: `pier up` on node A and `pier node` on nodes B and C, joined
# by an underlay, driven over the API server's HTTPS API, measured from namespaces. Called by
# benches/run.sh (suite `overlay`); runs alone too:
#   sudo PIER_BENCH_RUNS=10 PIER_BENCH_PER_NODE=30 PIER_BENCH_JSON=/tmp/overlay.json benches/overlay.sh
# Env: PIER_BENCH_RUNS (create->ping repetitions, default 10), PIER_BENCH_PER_NODE (Endpoints per
# node applied at once, default 30), PIER_BENCH_SAMPLE (endpoints pinged per ordered node pair in
# that phase, default 50), PIER_BENCH_CHURN (create/delete cycles, default 100),
# PIER_BENCH_IPERF_ROUNDS / PIER_BENCH_IPERF_SECONDS (alternating overlay/direct iperf3 runs,
# default 1 / 3), PIER_BENCH_FIXTURE_ONLY=1 (build the three nodes, check them, stop),
# PIER_BIN (default $CARGO_TARGET_DIR/release/pier, else target/release/pier), PIER_BENCH_JSON.
#
# The fixture (every name has this shell's pid, all removed on exit, on failure too):
# - underlay: bridge ul0 in namespace pbo<pid>-ul, 192.168.250.1/24;
# - nodes A, B, C: namespaces pbo<pid>-na/-nb/-nc, each with eth0 (a veth to ul0, MTU 1500),
#   192.168.250.11/12/13 and a default route via the underlay; the node agent detects its tunnel
#   address and underlay MTU from that route;
# - A: `pier up --node-netns` (node-a); B, C: `pier node` (node-b, node-c) under `nsenter --net`
#   (as tests/node.rs: named namespaces it creates stay visible), with the chart's environment and
#   a socat bridge (a UNIX socket on the machine, a TCP listener on the node's own 127.0.0.1 at the
#   API server's port) so the kubeconfig, and its certificate for 127.0.0.1, work unchanged;
# - one `driver: overlay` Network (10.232.0.0/16) and a prober Endpoint per node (pbo<pid>-pa/pb/pc,
#   10.232.0.11/12/13) that stays for the whole run.
#
# Measuring without artefacts of the measurement:
# - create -> ping: ping runs in B's prober before the Endpoint on A is created, so the prober
#   holds an INCOMPLETE neighbour entry for the address; the kernel would re-send ARP for it only
#   every second (retrans_time), adding up to 1 s that is not Pier's. The prober's interface gets
#   retrans_time_ms=1 and mcast_solicit=30000 for this phase: an ARP request every ms while
#   unresolved, so the queued echo leaves within ~1 ms of B's node answering for the address.
# - N per node at once: fping rounds (one ARP probe each, retrans 20 ms) from each node's prober
#   over a sample of the endpoints of each other node, until all answer; and every node's VXLAN
#   neighbour table polled until it holds every remote endpoint's address (all 2N, not a sample).
#   A sample because the kernel's neighbour table is one for all namespaces (gc_thresh3, 1024 by
#   default): pinging all 3N endpoints from the other nodes would need ~2x3N dynamic entries, and
#   a full table, not Pier, would set the figure.
# - iperf3: overlay (prober A -> prober B) and underlay direct (node A -> node B over a second pair
#   of veths on the same underlay bridge, whose MTU is set to the overlay's MTU) alternate, so
#   both see the same machine load; the figure is the median of each, never the best run.
# - churn: creates and deletes (dynamic addresses, so freed ones are reused with new MACs) through
#   one curl -Z (8 in flight), then the FDB (`bridge fdb show dev pvx*`, entries with dst) and
#   neighbour (`ip neigh show dev pvx*`) entries of every node are compared, entry by entry, with
#   the remote Endpoints the API server holds (Ready, address, MAC, their node's tunnel address).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/pier-up.sh
. benches/pier-up.sh

runs="${PIER_BENCH_RUNS:-10}"
per_node="${PIER_BENCH_PER_NODE:-30}"
sample="${PIER_BENCH_SAMPLE:-50}"
churn="${PIER_BENCH_CHURN:-100}"
iperf_rounds="${PIER_BENCH_IPERF_ROUNDS:-1}"
iperf_seconds="${PIER_BENCH_IPERF_SECONDS:-3}"
fixture_only="${PIER_BENCH_FIXTURE_ONLY:-0}"
pier="$(realpath "${PIER_BIN:-${CARGO_TARGET_DIR:-target}/release/pier}")"
json_out="${PIER_BENCH_JSON:-}"
[ "$(id -u)" = 0 ] || { echo "benches/overlay.sh needs root (namespaces, pier up)" >&2; exit 1; }
[ -x "$pier" ] || { echo "$pier not built (cargo build --release -p pier)" >&2; exit 1; }
for tool in socat nsenter fping iperf3 kubectl jq curl bridge; do
  command -v "$tool" >/dev/null || { echo "benches/overlay.sh needs $tool" >&2; exit 1; }
done
[ "$per_node" -le 2000 ] || { echo "PIER_BENCH_PER_NODE > 2000 does not fit the address plan" >&2; exit 1; }

tag="pbo$$"
ul="$tag-ul"
letters=(a b c)
node_ns=("$tag-na" "$tag-nb" "$tag-nc")
node_name=(node-a node-b node-c)
node_ip=(192.168.250.11 192.168.250.12 192.168.250.13)
direct_ip=(192.168.251.11 192.168.251.12)
handmade=("$tag-ka" "$tag-kb")       # containers on a hand-made kernel VXLAN (no Pier), for reference
handmade_ip=(10.233.0.11 10.233.0.12)
prober=("$tag-pa" "$tag-pb" "$tag-pc")
prober_ip=(10.232.0.11 10.232.0.12 10.232.0.13)
net="$tag-net"
ns="default"
work="$(mktemp -d /tmp/pier-bench-overlay.XXXXXX)"
data="$work/data"
up_pid=""
pgroups=() # process groups started here (socat bridges, pier node), killed on exit

cleanup() {
  local rc=$?
  set +e
  # The agents first (last started), then their API bridges.
  for ((i = ${#pgroups[@]} - 1; i >= 0; i--)); do kill -TERM -- "-${pgroups[$i]}" 2>/dev/null; done
  sleep 0.5
  for g in "${pgroups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
  pier_up_stop
  if [ -d "$data" ]; then
    "$pier" down --data-dir "$data" --node-netns "/run/netns/${node_ns[0]}" --purge >"$work/down.log" 2>&1 \
      || { echo "pier down:"; cat "$work/down.log"; } >&2
  fi
  # This run's namespaces only: the prefix has this shell's pid.
  ip netns list | awk '{print $1}' | grep -E "^$tag-" | while read -r n; do ip netns del "$n"; done
  rm -rf /etc/netns/"$tag"-*
  if [ "$rc" != 0 ]; then
    for log in "$work"/*.log; do
      [ -f "$log" ] || continue
      cp "$log" "/tmp/pier-bench-overlay-$(basename "$log")"
      echo "--- warnings and errors of $(basename "$log") (whole: /tmp/pier-bench-overlay-$(basename "$log"))" >&2
      grep -E "WARN|ERROR|panicked" "$log" | tail -10 >&2
    done
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { echo "$EPOCHREALTIME"; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) * 1000 }'; }
s_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { jq -s 'sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
  else (.[length / 2 - 1] + .[length / 2]) / 2 end'; }
# How often the kernel's neighbour table (one for all namespaces) was full so far.
arp_table_fulls() {
  local n=0 f
  if [ -r /proc/net/stat/arp_cache ]; then
    for f in $(awk 'NR > 1 { print $13 }' /proc/net/stat/arp_cache); do n=$((n + 16#$f)); done
  fi
  echo "$n"
}
wait_until() { # what seconds command...: polls every 0.2 s
  local what="$1" secs="$2"; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "$what: not within $secs s" >&2; return 1
}
# Sets the ARP probing of interface $2 in namespace $1: retrans_time_ms $3, mcast_solicit $4.
neigh_probing() {
  ip netns exec "$1" sysctl -q "net.ipv4.neigh.$2.retrans_time_ms=$3" "net.ipv4.neigh.$2.mcast_solicit=$4"
}

# --- the underlay and the three node namespaces
echo "== overlay: underlay and nodes ($tag-*)"
ip netns add "$ul"
ip -n "$ul" link set lo up
ip -n "$ul" link add ul0 type bridge
ip -n "$ul" addr add 192.168.250.1/24 dev ul0
ip -n "$ul" link set ul0 up
for k in 0 1 2; do
  n="${node_ns[$k]}"
  ip netns add "$n"
  ip -n "$n" link set lo up
  ip -n "$ul" link add "u-${letters[$k]}" type veth peer name eth0 netns "$n"
  ip -n "$ul" link set "u-${letters[$k]}" master ul0 up
  ip -n "$n" addr add "${node_ip[$k]}/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" route add default via 192.168.250.1
done
for k in 1 2; do
  wait_until "node A reaches ${node_ip[$k]} on the underlay" 10 \
    ip netns exec "${node_ns[0]}" ping -n -c1 -W0.5 "${node_ip[$k]}"
done

# --- node A: pier up
up_cmd=("$pier" up --data-dir "$data" --listen 127.0.0.1:0 --node-netns "/run/netns/${node_ns[0]}"
  --node-name "${node_name[0]}" --resync-seconds 10)
echo "== overlay: ${up_cmd[*]}"
pier_up_start "$work/up.out" "$work/node-a.log" "${up_cmd[@]}"
pier_api_client "$data/kubeconfig" "$work"
api_port="${server##*:}"
eps_url="$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints"
ep_url() { echo "$eps_url/$1?fieldManager=pier-bench&force=true"; }
ep_json() { # name node-index phase [address]: an Endpoint in the overlay Network on that node
  jq -cn --arg name "$1" --arg ns "$ns" --arg tag "$tag" --arg phase "$3" --arg net "$net" \
    --arg node "${node_name[$2]}" --arg address "${4:-}" \
    '{apiVersion: "pier.dev/v1alpha1", kind: "Endpoint",
      metadata: {name: $name, namespace: $ns, labels: {"pier-bench": $tag, "pier-bench-phase": $phase}},
      spec: ({network: $net, target: {netns: {name: $name, node: $node}}}
             + (if $address == "" then {} else {ipv4Address: $address} end))}'
}
apply_ep() { # name node-index phase [address]: one server-side apply; prints curl's "pretransfer total"
  api -X PATCH -H 'Content-Type: application/apply-patch+yaml' --data-binary "$(ep_json "$@")" \
    -o /dev/null -w '%{time_pretransfer} %{time_total}' "$(ep_url "$1")"
}
phase_count() { api "$eps_url?labelSelector=pier-bench-phase%3D$1,pier-bench%3D$tag" | jq '.items | length'; }
delete_phase() { # phase [keep]: deletes its Endpoints (but those labelled pier-bench-keep), waits until gone
  api -X DELETE -o /dev/null "$eps_url?labelSelector=pier-bench%3D$tag,pier-bench-phase%3D$1,pier-bench-keep!%3Dyes"
  for _ in $(seq 1200); do
    [ "$(api "$eps_url?labelSelector=pier-bench%3D$tag,pier-bench-phase%3D$1,pier-bench-keep!%3Dyes" \
      | jq '.items | length')" = 0 ] && return 0
    sleep 0.1
  done
  echo "Endpoints of phase $1 not gone after 120 s" >&2; return 1
}

# --- nodes B and C: pier node, as the chart's DaemonSet runs it
node_ready() { ip netns exec "$1" curl -sf -o /dev/null --max-time 2 http://127.0.0.1:9091/readyz; }
for k in 1 2; do
  n="${node_ns[$k]}"
  sock="$work/api-${letters[$k]}.sock"
  setsid socat "UNIX-LISTEN:$sock,fork" "TCP:127.0.0.1:$api_port" </dev/null 2>>"$work/socat.log" &
  pgroups+=("$!")
  wait_until "the API bridge's socket for ${node_name[$k]}" 10 test -S "$sock"
  setsid ip netns exec "$n" socat "TCP-LISTEN:$api_port,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$sock" </dev/null 2>>"$work/socat.log" &
  pgroups+=("$!")
  env -u KUBERNETES_SERVICE_HOST NODE_NAME="${node_name[$k]}" KUBECONFIG="$kubeconfig" \
    PIER_STATE_DIR="$work/state-${letters[$k]}" PIER_ADMIN_ADDR=127.0.0.1:9091 PIER_RESYNC_SECONDS=10 \
    PIER_NETNS_TARGETS=true PIER_REGISTER_NODE=true RUST_LOG=info,hickory_server=warn \
    setsid nsenter "--net=/var/run/netns/$n" -- "$pier" node </dev/null >"$work/node-${letters[$k]}.log" 2>&1 &
  pgroups+=("$!")
done
for k in 1 2; do wait_until "pier node on ${node_name[$k]} ready (/readyz)" 60 node_ready "${node_ns[$k]}"; done
# Each agent registers its Node (pier up its own; pier node with PIER_REGISTER_NODE=true) and
# records its tunnel address on it; a Pier without that is told apart here, not later.
registered_by_bench=()
for k in 0 1 2; do
  if ! wait_until "Node ${node_name[$k]} registered" 10 kc get node "${node_name[$k]}"; then
    echo "   registering Node ${node_name[$k]} for this Pier (its agent did not)" >&2
    printf '{"apiVersion":"v1","kind":"Node","metadata":{"name":"%s","labels":{"kubernetes.io/hostname":"%s","kubernetes.io/os":"linux"}}}' \
      "${node_name[$k]}" "${node_name[$k]}" | kc apply -f - >/dev/null
    registered_by_bench+=("${node_name[$k]}")
  fi
done
tunnel_of() { kc get node "$1" -o jsonpath='{.metadata.annotations.pier\.dev/tunnel-address}'; }
has_tunnel() { [ -n "$(tunnel_of "$1")" ]; }
tunnels_json="{}"
for k in 0 1 2; do
  wait_until "${node_name[$k]}'s tunnel address annotation" 10 has_tunnel "${node_name[$k]}" || true
  t="$(tunnel_of "${node_name[$k]}")"
  echo "   ${node_name[$k]}: underlay ${node_ip[$k]}, tunnel address recorded: ${t:-none}"
  tunnels_json="$(jq -c --arg n "${node_name[$k]}" --arg t "$t" '.[$n] = $t' <<<"$tunnels_json")"
done

# --- the overlay Network and a prober Endpoint on each node
echo "== overlay: Network $net (driver overlay) and a prober on each node"
api -X PATCH -H 'Content-Type: application/apply-patch+yaml' -o /dev/null \
  --data-binary "{\"apiVersion\":\"pier.dev/v1alpha1\",\"kind\":\"Network\",\"metadata\":{\"name\":\"$net\"},\"spec\":{\"driver\":\"overlay\",\"subnet\":\"10.232.0.0/16\",\"gateway\":\"10.232.0.1\"}}" \
  "$server/apis/pier.dev/v1alpha1/networks/$net?fieldManager=pier-bench&force=true"
for k in 0 1 2; do
  api -X PATCH -H 'Content-Type: application/apply-patch+yaml' -o /dev/null \
    --data-binary "$(ep_json "${prober[$k]}" "$k" probe "${prober_ip[$k]}" | jq -c '.metadata.labels["pier-bench-keep"] = "yes"')" \
    "$(ep_url "${prober[$k]}")"
done
ready_ep() { # Ready (allocated) and Attached (its node's agent made it, its MAC is in status)
  [ "$(kc get pep "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Attached")].status}')" = True/True ]
}
fixture_report() { # what the fixture's nodes hold, then stop (PIER_BENCH_FIXTURE_ONLY=1)
  echo "== overlay: fixture up (PIER_BENCH_FIXTURE_ONLY=1)"
  kc get nodes -o custom-columns='NODE:.metadata.name,TUNNEL:.metadata.annotations.pier\.dev/tunnel-address,MTU:.metadata.annotations.pier\.dev/underlay-mtu'
  kc get pnet,pep -o wide
  for k in 0 1 2; do echo "   ${node_name[$k]} links: $(ip -n "${node_ns[$k]}" -br link | awk '{print $1}' | tr '\n' ' ')"; done
  exit 0
}
for k in 0 1 2; do
  wait_until "prober ${prober[$k]} Ready and Attached" "$([ "$fixture_only" = 1 ] && echo 10 || echo 60)" ready_ep "${prober[$k]}" || [ "$fixture_only" = 1 ] || exit 1
done
netstatus="$(kc get pnet "$net" -o json | jq -c .status)"
bridge="$(jq -r '.bridge // empty' <<<"$netstatus")"
[ -n "$bridge" ] || [ "$fixture_only" = 1 ] || { echo "Network $net has no bridge in its status: $netstatus" >&2; exit 1; }
[ -n "$bridge" ] && [ "$fixture_only" != 1 ] || fixture_report
vxlan="pvx${bridge: -8}" # pier_crds::names::vxlan_name: "pvx" + the bridge's 8 hex digits
iface="$(kc get pep "${prober[1]}" -o jsonpath='{.status.interface}')"; iface="${iface:-eth0}"
overlay_mtu="$(ip -n "${prober[0]}" -j link show "$iface" | jq '.[0].mtu')"
echo "   status: $netstatus; VXLAN device $vxlan; endpoint MTU $overlay_mtu"
for pair in "0 1" "1 2" "2 0"; do
  read -r from to <<<"$pair"
  wait_until "prober on ${node_name[$from]} reaches the one on ${node_name[$to]}" 30 \
    ip netns exec "${prober[$from]}" ping -n -c1 -W0.5 "${prober_ip[$to]}"
done

# --- 1. Endpoint created on node A -> first ping answered from the prober on node B
echo "== overlay: create on ${node_name[0]} -> ping from ${node_name[1]}, $runs runs"
neigh_probing "${prober[1]}" "$iface" 1 30000
: >"$work/latency.ms"; : >"$work/request.ms"
failures=0
for i in $(seq "$runs"); do
  addr="10.232.$((1 + i / 250)).$((i % 250 + 2))"
  ip netns exec "${prober[1]}" ping -n -D -c1 -w5 -i0.002 "$addr" >"$work/ping.out" 2>&1 &
  p=$!
  sleep 0.1 # ping runs, the prober's neighbour entry for the address is INCOMPLETE
  t0="$(now)"
  timing="$(apply_ep "$tag-l$i" 0 latency "$addr")"
  reply=""
  if wait "$p"; then reply="$(sed -n 's/^\[\([0-9.]*\)\] [0-9]* bytes from.*/\1/p' "$work/ping.out" | head -1)"; fi
  if [ -z "$reply" ]; then
    failures=$((failures + 1)); echo "   run $i: no answer within 5 s"; continue
  fi
  # The clock starts when the request is sent: curl's start plus its time_pretransfer.
  awk -v t0="$t0" -v r="$reply" -v pre="${timing% *}" 'BEGIN { printf "%.2f\n", (r - t0 - pre) * 1000 }' >>"$work/latency.ms"
  awk -v pre="${timing% *}" -v total="${timing#* }" 'BEGIN { printf "%.2f\n", (total - pre) * 1000 }' >>"$work/request.ms"
  echo "   run $i: $(tail -1 "$work/latency.ms") ms"
done
latency_json="$(jq -sc . <"$work/latency.ms")"
request_json="$(jq -sc . <"$work/request.ms")"
echo "   median $(median <"$work/latency.ms" | xargs printf '%.1f') ms, failures $failures"
delete_phase latency

# --- 2. N Endpoints per node at once: sampled pings between every pair of nodes, full tables
echo "== overlay: ${node_name[*]} x $per_node Endpoints at once"
neigh_probing "${prober[1]}" "$iface" 20 1
for k in 0 1 2; do
  neigh_probing "${prober[$k]}" "$iface" 20 1
  ip -n "${prober[$k]}" neigh flush dev "$iface" >/dev/null 2>&1 || true
done
# The options of one request in a curl config (after `next` every request needs its own).
curl_block() { # url method
  printf 'url = "%s"\nrequest = "%s"\ncacert = "%s"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/apply-patch+yaml"\noutput = "/dev/null"\n' \
    "$1" "$2" "$work/ca.pem" "$token"
}
at_once_addr() { local j=$(($1 * per_node + $2)); echo "10.232.$((20 + j / 250)).$((j % 250 + 2))"; }
: >"$work/curl.cfg"
s=$((sample < per_node ? sample : per_node))
for i in $(seq 0 $((per_node - 1))); do # the nodes' Endpoints interleaved in the requests
  for k in 0 1 2; do
    name="$tag-s${letters[$k]}$i"
    ep_json "$name" "$k" at-once "$(at_once_addr "$k" "$i")" >"$work/ep-$name.json"
    { echo next; curl_block "$(ep_url "$name")" PATCH; echo "data-binary = \"@$work/ep-$name.json\""; echo fail; } >>"$work/curl.cfg"
  done
done
for k in 0 1 2; do
  : >"$work/remote-$k"; : >"$work/pending-$k"
  for o in 0 1 2; do
    [ "$o" = "$k" ] && continue
    # node k's table must hold every endpoint of the other nodes (the probers included) ...
    echo "${prober_ip[$o]}" >>"$work/remote-$k"
    for i in $(seq 0 $((per_node - 1))); do at_once_addr "$o" "$i" >>"$work/remote-$k"; done
    # ... and its prober pings a sample of each other node's, spread over the creation order.
    for m in $(seq 0 $((s - 1))); do
      at_once_addr "$o" $((s > 1 ? m * (per_node - 1) / (s - 1) : 0)) >>"$work/pending-$k"
    done
  done
  sort -u -o "$work/remote-$k" "$work/remote-$k"
done
sed -i '1d' "$work/curl.cfg" # no 'next' before the first
table_missing() { # node index -> how many of its remote addresses its VXLAN neighbour table lacks
  ip -n "${node_ns[$1]}" -j neigh show dev "$vxlan" 2>/dev/null | jq -r '.[]?.dst' | sort -u \
    | comm -23 "$work/remote-$1" - | wc -l
}
fulls0="$(arp_table_fulls)"
t0="$(now)"
curl -sS -Z --parallel-max 16 -K "$work/curl.cfg" >"$work/curl.log" 2>&1 &
curl_pid=$!
rounds=0; last_round_ms=0; t_sample=""; t_tables=""; t_requests=""; progress=""
while :; do
  r0="$(now)"
  fpings=()
  for k in 0 1 2; do
    : >"$work/alive-$k"
    [ -s "$work/pending-$k" ] || continue
    { ip netns exec "${prober[$k]}" fping -a -r0 -t50 -i0 -f "$work/pending-$k" 2>/dev/null || true; } \
      | sort >"$work/alive-$k" &
    fpings+=("$!")
  done
  [ "${#fpings[@]}" = 0 ] || wait "${fpings[@]}"
  missing=0
  for k in 0 1 2; do missing=$((missing + $(table_missing "$k"))); done
  r1="$(now)"
  rounds=$((rounds + 1)); last_round_ms="$(ms_between "$r0" "$r1")"
  pending=0
  for k in 0 1 2; do
    sort "$work/pending-$k" | comm -23 - "$work/alive-$k" >"$work/pending.next"
    mv "$work/pending.next" "$work/pending-$k"
    pending=$((pending + $(wc -l <"$work/pending-$k")))
  done
  progress="$progress$(awk -v a="$t0" -v b="$r1" -v p="$pending" -v m="$missing" \
    'BEGIN { printf "[%.3f,%d,%d],", b - a, p, m }')"
  if [ -z "$t_requests" ] && ! kill -0 "$curl_pid" 2>/dev/null; then
    wait "$curl_pid" || { echo "some applies failed:" >&2; cat "$work/curl.log" >&2; exit 1; }
    t_requests="$r1"
  fi
  [ -z "$t_sample" ] && [ "$pending" = 0 ] && t_sample="$r1"
  [ -z "$t_tables" ] && [ "$missing" = 0 ] && t_tables="$r1"
  [ -n "$t_sample" ] && [ -n "$t_tables" ] && break
  awk -v a="$t0" -v b="$r1" 'BEGIN { exit !((b - a) > 120) }' && break
done
[ -n "$t_requests" ] || { wait "$curl_pid" || true; t_requests="$(now)"; }
arp_fulls=$(($(arp_table_fulls) - fulls0))
opt_s() { if [ -n "$1" ]; then s_between "$t0" "$1"; else echo null; fi; }
sample_s="$(opt_s "$t_sample")"; tables_s="$(opt_s "$t_tables")"; req_s="$(s_between "$t0" "$t_requests")"
all_s=null
[ -n "$t_sample" ] && [ -n "$t_tables" ] && all_s="$(jq -n "[$sample_s, $tables_s] | max")"
echo "   every pair of nodes reachable after $all_s s (sampled pings $sample_s s, all remote entries on every node $tables_s s; requests done $req_s s; $rounds rounds, last $last_round_ms ms; $pending sampled addresses and $missing table entries missing at the end)"
d0="$(now)"
delete_phase at-once
del_s="$(s_between "$d0" "$(now)")"
at_once_json="$(jq -nc --argjson n "$per_node" --argjson s "$s" --argjson all "$all_s" --argjson sample "$sample_s" \
  --argjson tables "$tables_s" --argjson req "$req_s" --argjson rounds "$rounds" --argjson last "$last_round_ms" \
  --argjson pending "$pending" --argjson missing "$missing" --argjson progress "[${progress%,}]" \
  --argjson fulls "$arp_fulls" --argjson del "$del_s" --argjson thresh3 "$(sysctl -n net.ipv4.neigh.default.gc_thresh3)" \
  '{per_node: $n, nodes: 3, endpoints: (3 * $n), sample_per_node_pair: $s, all_reachable_s: $all,
    sampled_pings_answered_s: $sample, tables_complete_s: $tables, requests_done_s: $req,
    rounds: $rounds, last_round_ms: $last, sampled_not_answering: $pending, table_entries_missing: $missing,
    progress_s_pending_missing: $progress, arp_table_full_events: $fulls, arp_gc_thresh3: $thresh3,
    delete_all_s: $del}')"

# --- 3. iperf3: prober A -> prober B over the overlay vs node A -> node B on the underlay
echo "== overlay: iperf3, $iperf_rounds x ${iperf_seconds} s each way, MTU $overlay_mtu"
for k in 0 1; do
  ip -n "$ul" link add "m-${letters[$k]}" mtu "$overlay_mtu" type veth peer name direct0 netns "${node_ns[$k]}"
  ip -n "${node_ns[$k]}" link set direct0 mtu "$overlay_mtu"
  ip -n "$ul" link set "m-${letters[$k]}" master ul0 up
  ip -n "${node_ns[$k]}" addr add "${direct_ip[$k]}/24" dev direct0
  ip -n "${node_ns[$k]}" link set direct0 up
done
wait_until "node A reaches node B on the MTU $overlay_mtu underlay link" 10 \
  ip netns exec "${node_ns[0]}" ping -n -c1 -W0.5 -M "do" -s $((overlay_mtu - 28)) "${direct_ip[1]}"
# The kernel's VXLAN set up by hand the way Pier (and Docker's overlay driver) does it, beside
# Pier's on the same nodes: bridge + VXLAN device (learning off, proxy ARP, static FDB and
# neighbour entries) + a veth per container, same MTU; another VXLAN id and UDP port, so none of
# Pier's objects or rules is involved. What this path loses against the direct one is the
# kernel's VXLAN path; what Pier's loses against this one is Pier's.
for k in 0 1; do
  n="${node_ns[$k]}" c="${handmade[$k]}"
  ip netns add "$c"
  ip -n "$c" link set lo up
  ip -n "$n" link add kbr0 mtu "$overlay_mtu" type bridge
  ip -n "$n" link add kvx0 mtu "$overlay_mtu" type vxlan id 99 local "${node_ip[$k]}" dstport 4790 nolearning proxy
  ip -n "$n" link add kv0 mtu "$overlay_mtu" type veth peer name eth0 netns "$c"
  ip -n "$n" link set kvx0 master kbr0 up
  ip -n "$n" link set kv0 master kbr0 up
  ip -n "$n" link set kbr0 up
  ip -n "$c" addr add "${handmade_ip[$k]}/24" dev eth0
  ip -n "$c" link set eth0 mtu "$overlay_mtu" up
done
for k in 0 1; do
  o=$((1 - k))
  mac="$(ip -n "${handmade[$o]}" -j link show eth0 | jq -r '.[0].address')"
  ip -n "${node_ns[$k]}" neigh add "${handmade_ip[$o]}" lladdr "$mac" dev kvx0 nud permanent
  bridge -n "${node_ns[$k]}" fdb add "$mac" dev kvx0 dst "${node_ip[$o]}" self permanent
done
wait_until "the hand-made VXLAN pair reaches across" 10 \
  ip netns exec "${handmade[0]}" ping -n -c1 -W0.5 -M "do" -s $((overlay_mtu - 28)) "${handmade_ip[1]}"
iperf_gbps() { # server-namespace server-address client-namespace
  ip netns exec "$1" iperf3 -s -1 -B "$2" -p 5201 >/dev/null 2>&1 &
  local srv=$! out
  sleep 0.3
  out="$(ip netns exec "$3" iperf3 -J -c "$2" -p 5201 -t "$iperf_seconds" 2>/dev/null || true)"
  wait "$srv" 2>/dev/null || true
  jq -r '.end.sum_received.bits_per_second / 1e9 // empty' <<<"$out" 2>/dev/null
}
overlay_runs="[]"; direct_runs="[]"; handmade_runs="[]"
for _ in $(seq "$iperf_rounds"); do
  o="$(iperf_gbps "${prober[1]}" "${prober_ip[1]}" "${prober[0]}")"
  d="$(iperf_gbps "${node_ns[1]}" "${direct_ip[1]}" "${node_ns[0]}")"
  h="$(iperf_gbps "${handmade[1]}" "${handmade_ip[1]}" "${handmade[0]}")"
  echo "   overlay ${o:-failed} Gbit/s, underlay direct ${d:-failed} Gbit/s, hand-made VXLAN ${h:-failed} Gbit/s"
  [ -n "$o" ] && overlay_runs="$(jq -c ". + [$o]" <<<"$overlay_runs")"
  [ -n "$d" ] && direct_runs="$(jq -c ". + [$d]" <<<"$direct_runs")"
  [ -n "$h" ] && handmade_runs="$(jq -c ". + [$h]" <<<"$handmade_runs")"
done
iperf_json="$(jq -nc --argjson o "$overlay_runs" --argjson d "$direct_runs" --argjson h "$handmade_runs" \
  --argjson mtu "$overlay_mtu" --argjson secs "$iperf_seconds" --argjson rounds "$iperf_rounds" \
  '{mtu: $mtu, seconds: $secs, rounds: $rounds, overlay_runs_gbps: $o, direct_runs_gbps: $d,
    handmade_vxlan_runs_gbps: $h}')"

# --- 4. churn: create/delete across nodes, then every node's entries vs the live remote endpoints
window=16
echo "== overlay: churn, $churn create/delete cycles across the nodes ($window live at a time, every 100th kept)"
: >"$work/churn.cfg"
churn_delete() { # index: a DELETE in the churn config (no --fail: the write-out records the code)
  { echo next; curl_block "$eps_url/$tag-c$1" DELETE; echo 'write-out = "%{http_code}\n"'; } >>"$work/churn.cfg"
}
survivor() { [ $(($1 % 100)) = 0 ]; }
for i in $(seq 0 $((churn - 1))); do
  name="$tag-c$i"
  if survivor "$i"; then
    ep_json "$name" $((i % 3)) churn | jq -c '.metadata.labels["pier-bench-keep"] = "yes"'
  else ep_json "$name" $((i % 3)) churn; fi >"$work/ep-$name.json"
  { echo next; curl_block "$(ep_url "$name")" PATCH; echo "data-binary = \"@$work/ep-$name.json\""
    echo 'write-out = "%{http_code}\n"'; } >>"$work/churn.cfg"
  j=$((i - window))
  if [ "$j" -ge 0 ] && ! survivor "$j"; then churn_delete "$j"; fi
done
for j in $(seq $((churn > window ? churn - window : 0)) $((churn - 1))); do survivor "$j" || churn_delete "$j"; done
sed -i '1d' "$work/churn.cfg"
c0="$(now)"
curl -sS -Z --parallel-max 8 -K "$work/churn.cfg" \
  >"$work/churn.codes" 2>"$work/churn.err" || true
churn_requests_s="$(s_between "$c0" "$(now)")"
# 404 on a DELETE is a create still in flight elsewhere: counted, not an error of Pier.
http_failures="$(grep -cvE '^(200|201|202|404)$' "$work/churn.codes" || true)"
survivors=$(((churn + 99) / 100)) # 0, 100, 200, ... below $churn
# A DELETE that overtook its create (404) leaves that Endpoint: the collection delete takes it.
delete_phase churn
api_settled_s="$(s_between "$c0" "$(now)")"
# What every node's tables must hold: the overlay's allocated Endpoints on the other nodes.
expected_for() { # node index -> [{ip, mac, tunnel}]
  jq -c --arg node "${node_name[$1]}" --argjson tunnels "$tunnels_json" --arg net "$net" \
    '[.items[] | .status // {} | select(.network == $net and .node != $node and .ipv4Address and .macAddress
       and any(.conditions[]?; .type == "Allocated" and .status == "True"))
     | {ip: .ipv4Address, mac: (.macAddress | ascii_downcase), tunnel: ($tunnels[.node] // "")}]' "$work/eps.json"
}
compare_node() { # node index -> {node, fdb, neigh, expected, missing/stale of each, exact}
  local n="${node_ns[$1]}"
  jq -c -n --arg node "${node_name[$1]}" --argjson expected "$(expected_for "$1")" \
    --argjson fdb "$(ip netns exec "$n" bridge -j fdb show dev "$vxlan" 2>/dev/null || echo '[]')" \
    --argjson neigh "$(ip -n "$n" -j neigh show dev "$vxlan" 2>/dev/null || echo '[]')" \
    '($fdb | map(select(.dst)) | map({mac: (.mac | ascii_downcase), tunnel: .dst})) as $f
     | ($neigh | map({ip: .dst, mac: ((.lladdr // "") | ascii_downcase)})) as $h
     | ($expected | map({mac, tunnel})) as $ef | ($expected | map({ip, mac})) as $eh
     | {node: $node, fdb: ($f | length), neigh: ($h | length), expected: ($expected | length),
        missing_fdb: ($ef - $f), stale_fdb: ($f - $ef), missing_neigh: ($eh - $h), stale_neigh: ($h - $eh)}
     | .exact = (.fdb == .expected and .neigh == .expected and (.missing_fdb + .stale_fdb + .missing_neigh + .stale_neigh | length) == 0)'
}
all_exact() {
  api "$eps_url?labelSelector=pier-bench%3D$tag" >"$work/eps.json"
  nodes_json="[$(for k in 0 1 2; do compare_node "$k"; done | paste -sd,)]"
  jq -e 'all(.exact)' <<<"$nodes_json" >/dev/null
}
s0="$(now)"; converged_s=null
for _ in $(seq 150); do
  if all_exact; then converged_s="$(s_between "$s0" "$(now)")"; break; fi
  sleep 0.2
done
for k in 0 1 2; do
  jq -r --argjson k "$k" '.[$k] | "   \(.node): \(.fdb) FDB, \(.neigh) neighbour entries for \(.expected) live remote endpoints: \(if .exact then "exact" else "NOT exact: missing fdb \(.missing_fdb | length), stale fdb \(.stale_fdb | length), missing neigh \(.missing_neigh | length), stale neigh \(.stale_neigh | length)" end)"' <<<"$nodes_json"
done
churn_json="$(jq -nc --argjson cycles "$churn" --argjson window "$window" --argjson survivors "$survivors" \
  --argjson failures "$http_failures" --argjson req "$churn_requests_s" --argjson settled "$api_settled_s" \
  --argjson converged "$converged_s" --argjson nodes "$nodes_json" \
  --argjson codes "$(jq -R 'select(. != "")' "$work/churn.codes" | jq -sc 'group_by(.) | map({(.[0]): length}) | add // {}')" \
  '{cycles: $cycles, window: $window, survivors: $survivors, http_failures: $failures, http_codes: $codes,
    requests_s: $req, api_settled_s: $settled, tables_exact_after_s: $converged, nodes: $nodes}')"

if [ -n "$json_out" ]; then
  jq -n --argjson runs "$runs" --argjson failures "$failures" --argjson latency "$latency_json" \
    --argjson request "$request_json" --argjson at_once "$at_once_json" --argjson iperf "$iperf_json" \
    --argjson churn "$churn_json" --argjson status "$netstatus" --argjson tunnels "$tunnels_json" \
    --arg pier_version "$("$pier" --version 2>/dev/null || echo unknown)" --arg vxlan "$vxlan" \
    --argjson registered "$(printf '%s\n' "${registered_by_bench[@]}" | jq -R 'select(. != "")' | jq -sc .)" \
    '{bench: "overlay", pier: $pier_version, nodes: ["node-a", "node-b", "node-c"],
      network: {driver: "overlay", status: $status, vxlan_device: $vxlan}, tunnel_addresses: $tunnels,
      nodes_registered_by_bench: $registered,
      create_to_ping: {runs: $runs, failures: $failures, samples_ms: $latency, apply_request_ms: $request},
      at_once: $at_once, iperf3: $iperf, churn: $churn,
      commands: {
        fixture: "underlay bridge ul0 (192.168.250.1/24) in a namespace of its own; node namespaces A, B, C with eth0 (veth to ul0, MTU 1500), 192.168.250.11-13/24, default route via 192.168.250.1",
        pier_up: "pier up --data-dir DIR --listen 127.0.0.1:0 --node-netns /run/netns/NODE_A --node-name node-a --resync-seconds 10",
        pier_node: "nsenter --net=/var/run/netns/NODE -- pier node (env NODE_NAME, KUBECONFIG, PIER_STATE_DIR, PIER_ADMIN_ADDR=127.0.0.1:9091, PIER_RESYNC_SECONDS=10, PIER_NETNS_TARGETS=true, PIER_REGISTER_NODE=true; API through socat)",
        create: "curl -X PATCH (server-side apply of one Endpoint on node-a with a static address)",
        ping: "ip netns exec PROBER_ON_B ping -n -D -c1 -w5 -i0.002 ADDRESS (prober: retrans_time_ms=1, mcast_solicit=30000)",
        at_once_apply: "curl -Z --parallel-max 16 -K CONFIG (one PATCH per Endpoint, all nodes)",
        at_once_probe: "ip netns exec PROBER fping -a -r0 -t50 -i0 -f SAMPLE_NOT_ANSWERING_YET (each prober, its sample of the other nodes)",
        tables: "ip -n NODE -j neigh show dev pvxXXXXXXXX; bridge -j fdb show dev pvxXXXXXXXX (entries with dst)",
        iperf3: "iperf3 -J -c SERVER -t SECONDS (overlay: prober A -> prober B; direct: node A -> node B over veths with the overlay MTU on the same underlay bridge), alternating",
        churn: "curl -Z --parallel-max 8 -K CONFIG (PATCH Endpoint i on node i mod 3, DELETE Endpoint i-16 unless i-16 is a multiple of 100)"}}' >"$json_out"
  echo "   wrote $json_out"
fi
