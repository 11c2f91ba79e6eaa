# shellcheck shell=bash
# shellcheck disable=SC2034 # server and token are the sourcing script's to use
# Sourced by the benches that drive `pier up` over its API (local.sh, memory.sh, teardown.sh,
# overlay.sh).

# pier_up_start OUT LOG COMMAND...: starts COMMAND (a `pier up` command line) in the background,
# its stdout in OUT and its stderr in LOG, sets up_pid, and waits up to 60 s for its `ready` line.
pier_up_start() {
  local out="$1" log="$2"
  shift 2
  "$@" >"$out" 2>"$log" &
  up_pid=$!
  for _ in $(seq 600); do
    grep -qx ready "$out" 2>/dev/null && return 0
    kill -0 "$up_pid" 2>/dev/null || { echo "pier up exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "pier up not ready after 60 s" >&2
  exit 1
}

# pier_up_stop: stops the `pier up` of pier_up_start (SIGINT, then SIGKILL after 20 s), if any.
pier_up_stop() {
  if [ -n "${up_pid:-}" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"
    for _ in $(seq 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$up_pid" 2>/dev/null && kill -KILL "$up_pid"
    wait "$up_pid" 2>/dev/null
  fi
}

# pier_api_client KUBECONFIG DIR: kc (kubectl on KUBECONFIG), server, token and api (curl with
# the kubeconfig's CA and token, kept in DIR; the command itself in the array api_curl).
pier_api_client() {
  kubeconfig="$1"
  api_dir="$2"
  server="$(kc config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
  token="$(kc config view --raw -o jsonpath='{.users[0].user.token}')"
  kc config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
    | base64 -d >"$api_dir/ca.pem"
  printf 'header = "Authorization: Bearer %s"\n' "$token" >"$api_dir/auth.curlrc"
  api_curl=(curl -sS --fail-with-body --cacert "$api_dir/ca.pem" -K "$api_dir/auth.curlrc")
}
kc() { kubectl --kubeconfig "$kubeconfig" "$@"; }
api() { "${api_curl[@]}" "$@"; }

# pier_down NODE: `pier down --purge` on the data directory $data (if any) of a `pier up` that ran
# with --node-netns /run/netns/NODE: its kernel objects, namespaces and data go.
pier_down() {
  [ -n "${data:-}" ] && [ -d "$data" ] || return 0
  "$pier" down --data-dir "$data" --node-netns "/run/netns/$1" --purge >"$work/down.log" 2>&1 \
    || { echo "pier down:"; cat "$work/down.log"; } >&2
}

# pier_up_cleanup RC NAME NODE [KEEP]: what a bench's exit trap does after `pier up`, on success
# and failure alike: stops it, `pier down` (pier_down NODE), deletes this run's namespaces (named
# $tag-...; the tag has the bench shell's pid, so only its own). When RC is not 0, keeps the log
# ($work/up.log) as /tmp/pier-bench-NAME-up.log and shows its last warnings and errors; with
# KEEP, copies the log there whatever RC.
pier_up_cleanup() {
  local rc="$1" name="$2" node_netns="$3" keep="${4:-}"
  pier_up_stop
  pier_down "$node_netns"
  ip netns list | awk '{print $1}' | grep -E "^$tag-" | while read -r n; do ip netns del "$n"; done
  if [ "$rc" != 0 ] && [ -f "$work/up.log" ]; then
    cp "$work/up.log" "/tmp/pier-bench-$name-up.log"
    echo "--- pier up's warnings and errors (whole log: /tmp/pier-bench-$name-up.log)" >&2
    grep -E "WARN|ERROR|panicked" "$work/up.log" | tail -20 >&2
  fi
  if [ -n "$keep" ] && [ -f "$work/up.log" ]; then cp "$work/up.log" "$keep"; fi
}
