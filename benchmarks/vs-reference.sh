#!/usr/bin/env bash
# The one command to measure obdsnap: compares this checkout's obdsnap (A)
# against the reference server (B), containerd's own overlayfs snapshotter
# served over the same gRPC API (benchmarks/reference). Both are started
# afresh for every measurement; ratios A/B > 1 mean obdsnap does more ops/s
# (or has a longer p99). Arguments go to compare.sh / loadgen, e.g.
#
#   benchmarks/vs-reference.sh                                # everything, 10 s per cell, 2 rounds
#   benchmarks/vs-reference.sh --mix chain,stat --concurrency 1,16 --duration 2s --rounds 1
#   benchmarks/vs-reference.sh --rounds 4 --json-out /tmp/bench.jsonl
#
# Env: PYTHON (default python3) runs obdsnap; REFERENCE_FLAGS are appended to
# the reference's command line (e.g. --sync-remove).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
source "$here/gobuild.sh"
case "${1:-}" in -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;; esac

reference="$(bench_gobuild reference)"
python="${PYTHON:-python3}"
obdsnap_cmd="$(printf '%q' "$python") -m obdsnap serve --root {root} --address {address}"
reference_cmd="$(printf '%q' "$reference") --root {root} --address {address}${REFERENCE_FLAGS:+ $REFERENCE_FLAGS}"

# From the repository root, so that `-m obdsnap` is this checkout's.
cd "$repo"
exec "$here/compare.sh" "$obdsnap_cmd" "$reference_cmd" --label-a obdsnap --label-b reference "$@"
