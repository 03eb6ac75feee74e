#!/usr/bin/env bash
# Measure one snapshots server with the load generator (built on first use,
# cached in <repo>/.build). All arguments go to loadgen; one JSON line per
# (scenario, concurrency) on stdout, progress and errors on stderr.
#
#   benchmarks/run.sh --address SOCK [--mix chain,stat] [--concurrency 1,16,64] [--duration 10s]
#   benchmarks/run.sh --server 'python3 -m obdsnap serve --root {root} --address {address}' --mix all
#   benchmarks/run.sh --help       # every flag and scenario
#
# A --server command runs in the current directory, in its own process group,
# on a fresh root that is removed afterwards.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/gobuild.sh"
if [ $# -eq 0 ]; then sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; fi
loadgen="$(bench_gobuild loadgen)"
exec "$loadgen" "$@"
