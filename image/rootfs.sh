#!/bin/sh
# Copies the paths of image/rootfs.list into a root filesystem: `rootfs.sh LIST ROOT`. Each
# path keeps its place and gets its content (symlinks followed: the image needs the files, not
# the host's links). Used by the Dockerfile's build stage and by tests/image.rs.
set -eu
list="$1"
root="$2"
mkdir -p "$root"
grep -v '^[[:space:]]*#' "$list" | grep -v '^[[:space:]]*$' | while read -r path; do
  cp -rL --parents "$path" "$root"
done
# Pier's state and the named network namespaces live here (`pier up`, netns targets).
mkdir -p "$root/var/lib/pier" "$root/var/run/netns" "$root/etc/netns" "$root/tmp"
chmod 1777 "$root/tmp"
