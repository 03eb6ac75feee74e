#!/usr/bin/env bash
# Run containerd 1.6's snapshotter conformance suite against a proxy
# snapshotter server; every test gets its own server process and root.
#
#   tests/conformance/run.sh [--config-extra JSON] 'SERVER_CMD' [go test flags]
#   tests/conformance/run.sh --build      # build only, print the test binary
#
# SERVER_CMD is run by bash with {root} and {address} (and {config}, a JSON
# file {"root": ..., "address": ...} plus the keys of --config-extra)
# substituted; '' means $OBDSNAP_SERVER_CMD, else
# 'python3 -m obdsnap serve --config {config}'.
# --config-extra JSON: boot config keys for every server (default
# $OBDSNAP_EXTRA_CONFIG); SERVER_CMD must then use {config}. rwMode dir/dev
# need the TCMU simulator, e.g. as the pytest wrapper runs it:
#   python3 -m tcmusim install-tools /tmp/sim/tools
#   python3 -m tcmusim run --configfs /tmp/sim/configfs --sysfs /tmp/sim/sysfs \
#     --blob-store /tmp/sim/blobs &
#   tests/conformance/run.sh --config-extra '{"rwMode": "dir",
#     "configfsRoot": "/tmp/sim/configfs", "sysfsRoot": "/tmp/sim/sysfs",
#     "overlaybd_util_bin_dir": "/tmp/sim/tools"}' ''
# go test flags: -run, -count, -timeout (default 10m), -parallel, -failfast,
# -short, -list (also accepted as -test.X). Servers run from the repository root.
# After each test the driver removes every snapshot left, then stops the server.
#
# Env: OBDSNAP_TEST_LOG_DIR (server logs + go-test.out; default a new
# /tmp/obdsnap-conformance-* dir), OBDSNAP_START_TIMEOUT (default 20s),
# OBDSNAP_SERVER_TMPDIR (servers' sockets and roots; default /tmp),
# OBDSNAP_BUILD_DIR (default <repo>/.build), GOCODE (default /usr/share/gocode).
# Needs root: the suite mounts what the snapshotter returns.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="${OBDSNAP_BUILD_DIR:-$repo/.build}/conformance"
gocode="${GOCODE:-/usr/share/gocode}"
pkg="obdsnaptests/conformance"

usage() { sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# Builds the test binary in GOPATH mode against the Debian-packaged containerd
# sources, again only when the sources, Go or containerd changed.
build_test_binary() {
  command -v go >/dev/null ||
    { echo "go not found (apt-get install golang-go)" >&2; return 1; }
  [ -d "$gocode/src/github.com/containerd/containerd/snapshots/testsuite" ] ||
    { echo "containerd sources not found in $gocode (apt-get install golang-github-containerd-containerd-dev)" >&2; return 1; }
  mkdir -p "$build"
  local binary="$build/conformance.test" src="$build/gopath/src/$pkg" sum
  exec 9>"$build/.lock"
  flock 9
  sum=$({ go version
          cat "$gocode/src/github.com/containerd/containerd/version/version.go"
          cd "$here" && sha256sum -- *.go
        } | sha256sum | cut -d' ' -f1)
  if [ ! -x "$binary" ] || [ "$(cat "$binary.sum" 2>/dev/null)" != "$sum" ]; then
    echo "building $pkg -> $binary" >&2
    rm -rf "$src" && mkdir -p "$src" && cp "$here"/*.go "$src/"
    local gocache
    gocache="${GOCACHE:-$(go env GOCACHE 2>/dev/null || true)}"
    if [ -z "$gocache" ] || [ "$gocache" = off ]; then gocache="$build/go-cache"; fi
    (cd "$build" && GO111MODULE=off GOFLAGS= GOCACHE="$gocache" \
      GOPATH="$build/gopath:$gocode" go test -c -o "$binary.new" "$pkg") >&2
    mv -f "$binary.new" "$binary"
    echo "$sum" >"$binary.sum"
  fi
  exec 9>&-
  echo "$binary"
}

case "${1:-}" in
  -h|--help) usage ;;
  --build) build_test_binary; exit ;;
  --config-extra) [ $# -ge 2 ] || usage; export OBDSNAP_EXTRA_CONFIG="$2"; shift 2 ;;
  --config-extra=*) export OBDSNAP_EXTRA_CONFIG="${1#--config-extra=}"; shift ;;
esac
[ $# -ge 1 ] || usage
default_cmd='python3 -m obdsnap serve --config {config}'
if [ -n "$1" ]; then
  export OBDSNAP_SERVER_CMD="$1"
else
  export OBDSNAP_SERVER_CMD="${OBDSNAP_SERVER_CMD:-$default_cmd}"
fi
shift
binary="$(build_test_binary)"

args=(-test.v -test.timeout 10m)
for arg in "$@"; do
  case "$arg" in
    -test.*) args+=("$arg") ;;
    -run|-run=*|-count|-count=*|-timeout|-timeout=*|-parallel|-parallel=*|-failfast|-short|-list|-list=*|-cpu|-cpu=*)
      args+=("-test.${arg#-}") ;;
    *) args+=("$arg") ;;
  esac
done
[ "$(id -u)" = 0 ] || echo "warning: not root; the suite's mounts will fail" >&2
if [ -n "${OBDSNAP_EXTRA_CONFIG:-}" ]; then
  echo "extra config: $OBDSNAP_EXTRA_CONFIG" >&2
fi

export OBDSNAP_TEST_LOG_DIR="${OBDSNAP_TEST_LOG_DIR:-$(mktemp -d /tmp/obdsnap-conformance-XXXXXX)}"
mkdir -p "$OBDSNAP_TEST_LOG_DIR"
out="$OBDSNAP_TEST_LOG_DIR/go-test.out"
set +e
(cd "$repo" && "$binary" "${args[@]}") 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
count() { grep -c -- "--- $1: TestSnapshotterSuite/" "$out" || true; }
echo "summary: passed=$(count PASS) failed=$(count FAIL) skipped=$(count SKIP) exit=$rc logs=$OBDSNAP_TEST_LOG_DIR"
exit "$rc"
