#!/usr/bin/env bash
# The size of the `pier` image, whose binary is the release binary under test: the Dockerfile's
# runtime stage is FROM scratch plus the root filesystem image/rootfs.sh assembles from
# image/rootfs.list, so this assembles that list out of this machine's files (Debian 12, as the
# build stage; tests/image.rs checks that the list is exactly what its executables load), with
# the binary given in place of the list's first entry. Called by benches/memory.sh; runs alone:
#   sudo benches/image.sh target/release/pier
# Prints one JSON object on stdout: the layer's bytes as a tar and as gzip (the compression
# `docker push` uses, so what a registry stores and a node pulls), the number of files, and,
# where Debian's docker.io is installed, the image's size as Docker reports it
# (`docker image inspect`) after importing the layer with the Dockerfile's USER, ENTRYPOINT and
# CMD into a dockerd of the bench's own (benches/dockerd.sh), and what `pier --version` printed
# when run from it; elsewhere, why that was not measured.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/dockerd.sh
. benches/dockerd.sh

[ "$#" = 1 ] || { echo "usage: benches/image.sh PIER_BINARY" >&2; exit 2; }
pier="$(realpath "$1")"
[ -x "$pier" ] || { echo "$pier: not an executable" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "benches/image.sh needs root (its own dockerd)" >&2; exit 1; }

work="$(mktemp -d /tmp/pier-bench-image.XXXXXX)"
cleanup() {
  dockerd_stop
  rm -rf "$work"
}
trap cleanup EXIT

list=image/rootfs.list
binary_in_image="$(grep -v '^[[:space:]]*#' "$list" | grep -v '^[[:space:]]*$' | head -1)"
grep -vx "$binary_in_image" "$list" >"$work/rootfs.list"
sh image/rootfs.sh "$work/rootfs.list" "$work/rootfs"
install -D -m 0755 "$pier" "$work/rootfs$binary_in_image"
tar -C "$work/rootfs" --numeric-owner -cf "$work/layer.tar" .
layer_bytes="$(stat -c %s "$work/layer.tar")"
gzip_bytes="$(gzip -c "$work/layer.tar" | wc -c)"
files="$(find "$work/rootfs" -type f | wc -l)"
layer="$(jq -n --argjson tar "$layer_bytes" --argjson gzip "$gzip_bytes" --argjson files "$files" \
  '{layer_bytes: $tar, layer_gzip_bytes: $gzip, files: $files}')"

if ! dockerd_available; then
  jq -n --argjson layer "$layer" \
    '$layer + {measured: false, why: "no Docker here (Debian docker.io not installed)"}'
  exit 0
fi

mkdir -p "$work/docker"
if ! dockerd_start "pbi$$" "$work/docker"; then
  jq -n --argjson layer "$layer" '$layer + {measured: false, why: "its own dockerd did not start"}'
  exit 0
fi
changes=()
# The runtime stage's own instructions (the build stage has none of these).
while IFS= read -r instruction; do changes+=(--change "$instruction"); done \
  < <(grep -E '^(USER|ENTRYPOINT|CMD) ' Dockerfile)
$docker import "${changes[@]}" "$work/layer.tar" pier-bench/pier:image >/dev/null
image_bytes="$($docker image inspect --format '{{.Size}}' pier-bench/pier:image)"
ran="$($docker run --rm --network none pier-bench/pier:image --version)"
jq -n --argjson layer "$layer" --argjson bytes "$image_bytes" \
  --arg docker "$($docker version --format '{{.Server.Version}}')" --arg ran "$ran" \
  '$layer + {measured: true, bytes: $bytes, docker: $docker, version_from_image: $ran}'
