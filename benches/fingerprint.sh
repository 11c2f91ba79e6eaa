#!/usr/bin/env bash
# Prints the fingerprint of the code a benchmark measures: a hash of every file git would commit
# from the work tree as it is now (tracked, modified and untracked-but-not-ignored files), leaving
# out Markdown and the generated report (benches/report/), which do not change what runs. Two runs
# with the same fingerprint measured the same code, whether it was committed or not; a suite whose
# recorded fingerprint differs from the current one is stale (benches/driver says so).
set -euo pipefail
cd "$(dirname "$0")/.."
index="$(mktemp)"
trap 'rm -f "$index"' EXIT
cp "$(git rev-parse --git-path index)" "$index"
GIT_INDEX_FILE="$index" git add -A
GIT_INDEX_FILE="$index" git ls-files -s -- . ':(exclude)*.md' ':(exclude)benches/report' |
  sha256sum | cut -c1-16
