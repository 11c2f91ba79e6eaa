#!/usr/bin/env bash
# Resources of `pier up`: memory (RSS) idle, with N Endpoints attached, after deleting them and
# after rounds of creating and deleting; the sizes of the binary and of the image that carries
# it (benches/image.sh); and how long `pier up` takes to say `ready`, on an empty data directory
# and with objects stored. Called by benches/run.sh (suite `memory`); runs alone too:
#   sudo PIER_BENCH_JSON=/tmp/memory.json benches/memory.sh
# Env: PIER_BENCH_STARTS (starts timed per case, default 5), PIER_BENCH_ENDPOINTS (attached at
# once, default 500), PIER_BENCH_CHURN_ROUNDS / PIER_BENCH_CHURN (rounds of creating and
# deleting, default 4 x 300), PIER_BENCH_STORED (objects stored for the second startup case,
# default 2000), PIER_BENCH_SETTLE (seconds waited before reading RSS, default 5), PIER_BIN
# (default $CARGO_TARGET_DIR/release/pier, else target/release/pier), PIER_BENCH_JSON.
#
# Everything runs in namespaces made here, named with this shell's pid: the node is
# `pbm<pid>-node` (`pier up --node-netns`), Endpoints target named namespaces `pbm<pid>-<n>` that
# Pier creates. All of them, `pier up` and its data directories go at the end, on failure too.
#
# - RSS is VmRSS of the `pier up` process (/proc/PID/status), read after PIER_BENCH_SETTLE
#   seconds without requests (the allocator returns freed memory to the system on a timer);
#   high-water is VmHWM, the largest RSS the process ever had. Attached means the Endpoint's
#   `Attached` condition is True (its veth is in place), polled over the API.
# - Startup: the clock starts when `pier up` is executed and stops when its `ready` line reaches
#   a reader of its stdout (a FIFO, read line by line, so no polling interval adds to it).
#   Stored objects: Endpoints targeting namespaces of another node (`node-b`), allocated by the
#   operator (so they are read, rebuilt into the allocators and reconciled at every start) but
#   attached by no kernel here: the figure is Pier's, not the kernel's veth creation.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/pier-up.sh
. benches/pier-up.sh

starts="${PIER_BENCH_STARTS:-5}"
endpoints="${PIER_BENCH_ENDPOINTS:-500}"
churn_rounds="${PIER_BENCH_CHURN_ROUNDS:-4}"
churn="${PIER_BENCH_CHURN:-300}"
stored="${PIER_BENCH_STORED:-2000}"
settle="${PIER_BENCH_SETTLE:-5}"
pier="$(realpath "${PIER_BIN:-${CARGO_TARGET_DIR:-target}/release/pier}")"
json_out="${PIER_BENCH_JSON:-}"
[ "$(id -u)" = 0 ] || { echo "benches/memory.sh needs root (pier up)" >&2; exit 1; }
[ -x "$pier" ] || { echo "$pier not built (cargo build --release -p pier)" >&2; exit 1; }
for tool in jq curl kubectl; do
  command -v "$tool" >/dev/null || { echo "benches/memory.sh needs $tool" >&2; exit 1; }
done

tag="pbm$$"
node="$tag-node"
work="$(mktemp -d /tmp/pier-bench-memory.XXXXXX)"
data=""
up_pid=""
ns="default"
net="$tag-net"
subnet_prefix="10.233"

down() { pier_down "$node"; } # removes what the last `pier up` made (kernel objects, namespaces, data)
cleanup() {
  local rc=$?
  set +e
  pier_up_cleanup "$rc" memory "$node"
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# {median, min, max, samples} of the numbers on stdin (one a line) as JSON.
stats() {
  jq -s 'sort | if length == 0 then null else
    {median: (if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end),
     min: .[0], max: .[-1], samples: .} end'
}
mib() { awk -v k="$1" '$1 == k":" { printf "%.1f", $2 / 1024 }' "/proc/$up_pid/status"; }
# RSS is anonymous memory (the heap, stacks) plus the pages of the binary that were read in
# (code run so far: the first Endpoints page in the attach and firewall code, and the kernel
# keeps those pages mapped): both are recorded, so the figure says which of the two grew.
# Threads too: each has a stack and the allocator's per-thread cache, and the runtime's blocking
# threads (kernel work) outlive a burst by their keep-alive.
rss_json() { # what: {what, vmrss_mib, vmhwm_mib, rss_anon_mib, rss_file_mib, threads}
  jq -nc --arg what "$1" --argjson rss "$(mib VmRSS)" --argjson hwm "$(mib VmHWM)" \
    --argjson anon "$(mib RssAnon)" --argjson file "$(mib RssFile)" \
    --argjson threads "$(awk '$1 == "Threads:" { print $2 }' "/proc/$up_pid/status")" \
    '{what: $what, vmrss_mib: $rss, vmhwm_mib: $hwm, rss_anon_mib: $anon, rss_file_mib: $file, threads: $threads}'
}

# timed_up DATA: starts `pier up` on DATA in the background (up_pid) and sets up_s to the seconds
# from its exec to its `ready` line, read from a FIFO as it is written. (Not in a subshell: the
# process must stay this shell's child.)
timed_up() {
  data="$1"
  rm -f "$work/up.fifo" "$work/ready"
  mkfifo "$work/up.fifo"
  { while IFS= read -r line; do
      [ "$line" = ready ] && echo "$EPOCHREALTIME" >"$work/ready"
    done <"$work/up.fifo"; } >/dev/null &
  local t0="$EPOCHREALTIME"
  "$pier" up --data-dir "$data" --listen 127.0.0.1:0 --node-netns "/run/netns/$node" \
    --node-name node-a --resync-seconds 10 >"$work/up.fifo" 2>"$work/up.log" &
  up_pid=$!
  for _ in $(seq 6000); do
    [ -s "$work/ready" ] && break
    kill -0 "$up_pid" 2>/dev/null || { echo "pier up exited" >&2; exit 1; }
    sleep 0.01
  done
  [ -s "$work/ready" ] || { echo "pier up not ready after 60 s" >&2; exit 1; }
  up_s="$(awk -v a="$t0" -v b="$(cat "$work/ready")" 'BEGIN { printf "%.4f", b - a }')"
}

ep_json() { # name address node
  printf '{"apiVersion":"pier.dev/v1alpha1","kind":"Endpoint","metadata":{"name":"%s","namespace":"%s","labels":{"pier-bench":"%s"}},"spec":{"network":"%s","target":{"netns":{"name":"%s","node":"%s"}},"ipv4Address":"%s"}}' \
    "$1" "$ns" "$tag" "$net" "$1" "$3" "$2"
}
ep_url() { echo "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints/$1?fieldManager=pier-bench&force=true"; }
apply_network() {
  api -X PATCH -H 'Content-Type: application/apply-patch+yaml' -o /dev/null \
    --data-binary "{\"apiVersion\":\"pier.dev/v1alpha1\",\"kind\":\"Network\",\"metadata\":{\"name\":\"$net\"},\"spec\":{\"subnet\":\"$subnet_prefix.0.0/16\",\"gateway\":\"$subnet_prefix.0.1\"}}" \
    "$server/apis/pier.dev/v1alpha1/networks/$net?fieldManager=pier-bench&force=true"
}
# create_eps N NODE: N Endpoints (16 requests in flight), named after a counter so rounds differ.
round=0
create_eps() {
  local n="$1" on="$2" i
  round=$((round + 1))
  : >"$work/curl.cfg"
  for i in $(seq 0 $((n - 1))); do
    ep_json "$tag-r$round-$i" "$subnet_prefix.$((10 + i / 250)).$((i % 250 + 2))" "$on" >"$work/ep-$i.json"
    {
      [ "$i" = 0 ] || echo 'next'
      echo "url = \"$(ep_url "$tag-r$round-$i")\""
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
}
eps() { api "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints?labelSelector=pier-bench%3D$tag"; }
# wait_eps CONDITION N: until N Endpoints have CONDITION True (180 s at most).
wait_eps() {
  local cond="$1" n="$2" have=0
  for _ in $(seq 1800); do
    have="$(eps | jq --arg c "$cond" '[.items[] | select(any(.status.conditions[]?; .type == $c and .status == "True"))] | length')"
    [ "$have" -ge "$n" ] && return 0
    sleep 0.1
  done
  echo "only $have of $n Endpoints $cond after 180 s" >&2; exit 1
}
delete_eps() { # all of them; waits until they are gone (finalizers done)
  api -X DELETE -o /dev/null "$server/apis/pier.dev/v1alpha1/namespaces/$ns/endpoints?labelSelector=pier-bench%3D$tag"
  for _ in $(seq 1800); do [ "$(eps | jq '.items | length')" = 0 ] && return 0; sleep 0.1; done
  echo "Endpoints not gone after 180 s" >&2; exit 1
}
settled_rss() { sleep "$settle"; rss_json "$1"; }

ip netns add "$node"
ip netns exec "$node" ip link set lo up

# --- startup on an empty data directory
: >"$work/empty.s"
for i in $(seq "$starts"); do
  timed_up "$work/empty-$i"
  echo "$up_s" >>"$work/empty.s"
  echo "== memory: start $i on an empty data directory: ready after $up_s s"
  pier_up_stop; down
done

# --- memory: idle, N attached, deleted, rounds of churn
echo "== memory: $endpoints Endpoints attached, then deleted; $churn_rounds rounds of $churn"
timed_up "$work/mem"
pier_api_client "$data/kubeconfig" "$work"
rss="[$(settled_rss idle)]"
echo "   idle: $rss"
apply_network
create_eps "$endpoints" node-a
wait_eps Attached "$endpoints"
rss="$(jq -c --argjson r "$(settled_rss "$endpoints attached")" '. + [$r]' <<<"$rss")"
delete_eps
rss="$(jq -c --argjson r "$(settled_rss "$endpoints deleted")" '. + [$r]' <<<"$rss")"
for r in $(seq "$churn_rounds"); do
  create_eps "$churn" node-a
  wait_eps Attached "$churn"
  delete_eps
  rss="$(jq -c --argjson r "$(rss_json "churn round $r: $churn created and deleted")" '. + [$r]' <<<"$rss")"
done
rss="$(jq -c --argjson r "$(settled_rss "after $churn_rounds rounds of $churn")" '. + [$r]' <<<"$rss")"
jq -r '.[] | "   \(.what): RSS \(.vmrss_mib) MiB (anonymous \(.rss_anon_mib), binary \(.rss_file_mib); \(.threads) threads), high-water \(.vmhwm_mib) MiB"' <<<"$rss"
pier_up_stop; down

# --- startup with objects stored
echo "== memory: storing $stored Endpoints (node-b)"
timed_up "$work/stored"
pier_api_client "$data/kubeconfig" "$work"
apply_network
create_eps "$stored" node-b
wait_eps Allocated "$stored"
pier_up_stop
store_bytes="$(du -sb "$data/api" | cut -f1)"
: >"$work/stored.s"
for i in $(seq "$starts"); do
  timed_up "$work/stored"
  echo "$up_s" >>"$work/stored.s"
  echo "== memory: start $i with $stored Endpoints stored: ready after $up_s s"
  pier_up_stop
done
down

# --- the binary, and the image that carries it
bin_bytes="$(stat -c %s "$pier")"
debug_sections="$(readelf -S --wide "$pier" | awk '$2 ~ /^\.debug_/ {print $2}' | paste -sd, -)"
# A failure there (its messages are above) costs the image's figure, not the suite's.
image_json="$(benches/image.sh "$pier")" ||
  image_json='{"measured": false, "why": "benches/image.sh failed"}'
echo "== memory: image $(jq -r 'if .measured then "\(.bytes) bytes (Docker \(.docker))" else "not measured: \(.why)" end' <<<"$image_json"), layer $(jq -r .layer_gzip_bytes <<<"$image_json") bytes gzip-compressed"

if [ -n "$json_out" ]; then
  jq -n --argjson empty "$(stats <"$work/empty.s")" --argjson with_stored "$(stats <"$work/stored.s")" \
    --argjson stored "$stored" --argjson store_bytes "$store_bytes" --argjson rss "$rss" \
    --argjson endpoints "$endpoints" --argjson rounds "$churn_rounds" --argjson churn "$churn" \
    --argjson settle "$settle" --argjson bin "$bin_bytes" --arg debug "$debug_sections" \
    --argjson image "$image_json" --arg pier_version "$("$pier" --version 2>/dev/null || echo unknown)" \
    '{bench: "memory", pier: $pier_version, settle_s: $settle,
      startup_s: {empty: $empty, stored: ($with_stored + {objects: $stored, store_bytes: $store_bytes})},
      rss: $rss, endpoints: $endpoints, churn: {rounds: $rounds, per_round: $churn},
      binary: {bytes: $bin, debug_sections: ($debug | split(",") | map(select(. != "")))},
      image: $image,
      peers: {kind: "not measured: not packaged by Debian, and its node image (kindest/node) comes from a registry", k3s: "not measured: not installed, no registry to fetch it"},
      commands: {pier_up: "pier up --data-dir DIR --listen 127.0.0.1:0 --node-netns /run/netns/NODE --node-name node-a --resync-seconds 10",
                 rss: "grep -E \"VmRSS|VmHWM|RssAnon|RssFile\" /proc/PID_OF_PIER_UP/status",
                 apply: "curl -Z --parallel-max 16 -K CONFIG (one server-side apply PATCH per Endpoint)",
                 ready: "the time from exec to the `ready` line on pier up'"'"'s stdout"}}' >"$json_out"
  echo "   wrote $json_out"
fi
