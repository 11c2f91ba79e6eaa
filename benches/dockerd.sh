# shellcheck shell=bash
# Sourced by the benches that need a Docker daemon (docker.sh, image.sh): a dockerd of the
# bench's own, so nothing touches the machine's own Docker or network namespace. It runs in a
# network namespace made here (entered with nsenter: `ip netns exec` would remount /sys and
# hide the cgroup mounts dockerd needs), with its data, socket and containerd namespace in a
# directory of the bench's; its bridges, veths and iptables rules live and die with that
# namespace. Needs Debian's docker.io (dockerd, containerd, runc).

# Debian's client, matching its daemon (another docker may come first in PATH).
docker=/usr/bin/docker

# dockerd_available: whether Debian's docker.io is installed.
dockerd_available() { command -v dockerd >/dev/null && [ -x "$docker" ]; }

# dockerd_in_ns COMMAND...: runs COMMAND in the daemon's network namespace.
dockerd_in_ns() { nsenter --net="/run/netns/$dockerd_netns" "$@"; }

# dockerd_start NETNS DIR: makes network namespace NETNS, starts dockerd in it with its state
# under DIR, exports DOCKER_HOST for $docker, and waits up to 30 s for it to answer.
dockerd_start() {
  dockerd_netns="$1"
  dockerd_dir="$2"
  export DOCKER_HOST="unix://$dockerd_dir/docker.sock"
  ip netns add "$dockerd_netns"
  dockerd_in_ns ip link set lo up
  dockerd_in_ns dockerd --data-root "$dockerd_dir/data" --exec-root "$dockerd_dir/exec" \
    --pidfile "$dockerd_dir/dockerd.pid" -H "$DOCKER_HOST" --storage-driver vfs \
    --containerd-namespace "$dockerd_netns" --containerd-plugins-namespace "$dockerd_netns-plugins" \
    >"$dockerd_dir/dockerd.log" 2>&1 &
  for _ in $(seq 150); do $docker info >/dev/null 2>&1 && return 0; sleep 0.2; done
  tail -5 "$dockerd_dir/dockerd.log" >&2
  echo "dockerd did not start" >&2
  return 1
}

# dockerd_stop: removes every container, stops dockerd and deletes its namespace (safe to call
# when dockerd_start did not run or failed half way).
dockerd_stop() {
  [ -n "${dockerd_dir:-}" ] || return 0
  if [ -S "$dockerd_dir/docker.sock" ]; then
    { $docker ps -aq 2>/dev/null || true; } | xargs -r $docker rm -f >/dev/null 2>&1 || true
  fi
  if [ -f "$dockerd_dir/dockerd.pid" ]; then kill "$(cat "$dockerd_dir/dockerd.pid")" 2>/dev/null || true; fi
  for _ in $(seq 50); do pgrep -f "$dockerd_dir/docker.sock" >/dev/null || break; sleep 0.2; done
  ip netns del "$dockerd_netns" 2>/dev/null || true
}
