#!/usr/bin/env bash
# Compare two snapshots servers: every (scenario, concurrency) is measured
# --rounds times per server, alternating A,B,A,B, each time on a freshly
# started server with a fresh root. Prints a table of median ops/s and p99
# with ratios A/B and a noise column on stdout, progress on stderr.
#
#   benchmarks/compare.sh 'CMD_A' 'CMD_B' [--isolate ext4|tmpfs|none] [loadgen flags]
#   benchmarks/compare.sh 'CMD_A' 'CMD_B' --mix chain,stat --concurrency 1,16 --duration 5s --rounds 4
#
# Commands are run by bash in the current directory with {root} and {address}
# substituted. Loadgen flags: --mix, --concurrency, --duration, --warmup,
# --rounds, --keys, --depth, --op-timeout, --max-time, --json-out FILE,
# --label-a/--label-b NAME (see benchmarks/run.sh --help).
#
# --isolate (default ext4 as root, else none): A and B each get a fresh
# loop-mounted ext4 image (ISOLATE_SIZE, default 4G), or a tmpfs, removed
# afterwards. On one shared filesystem, one server's mass deletes at cleanup
# and the allocator state they leave skew the other's next measurement.
# tmpfs also takes fsync cost out of the picture; none uses $TMPDIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/gobuild.sh"

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
case "$1" in -h|--help) usage ;; esac
cmd_a=$1 cmd_b=$2
shift 2

isolate=none
[ "$(id -u)" = 0 ] && isolate=ext4
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --isolate) [ $# -ge 2 ] || usage; isolate=$2; shift 2 ;;
    --isolate=*) isolate=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
case "$isolate" in
  ext4|tmpfs)
    [ "$(id -u)" = 0 ] || { echo "compare.sh: --isolate $isolate needs root (mount)" >&2; exit 2; } ;;
  none) ;;
  *) echo "compare.sh: unknown --isolate '$isolate' (ext4|tmpfs|none)" >&2; exit 2 ;;
esac

loadgen="$(bench_gobuild loadgen)"

scratch=""
teardown() {
  [ -n "$scratch" ] || return 0
  local side
  for side in a b; do
    if mountpoint -q "$scratch/$side"; then
      umount "$scratch/$side" 2>/dev/null || umount -l "$scratch/$side" || true
    fi
  done
  rm -rf "$scratch"
}
trap teardown EXIT
trap 'exit 130' INT TERM

if [ "$isolate" != none ]; then
  scratch="$(mktemp -d /tmp/obdsnap-bench-XXXXXX)"
  for side in a b; do
    mkdir "$scratch/$side"
    if [ "$isolate" = tmpfs ]; then
      mount -t tmpfs -o "size=${ISOLATE_SIZE:-4G}" tmpfs "$scratch/$side"
    else
      # A sparse image; lazy init off so the kernel is not still zeroing
      # inode tables in the background while we measure.
      truncate -s "${ISOLATE_SIZE:-4G}" "$scratch/$side.img"
      mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$scratch/$side.img"
      mount -o loop "$scratch/$side.img" "$scratch/$side"
    fi
  done
  echo "compare.sh: A and B on separate $isolate filesystems under $scratch" >&2
  args+=(--tmpdir-a "$scratch/a" --tmpdir-b "$scratch/b")
fi

# Not exec: the trap must unmount and remove the images afterwards.
"$loadgen" --a "$cmd_a" --b "$cmd_b" "${args[@]}"
