#!/usr/bin/env bash
# Builds the Go tools under benchmarks/ (reference, loadgen) in GOPATH mode
# against the Debian-packaged containerd 1.6 sources, the same way
# tests/conformance/run.sh builds the conformance suite: no module proxy, no
# network. Binaries are cached in <repo>/.build/benchmarks (gitignored) and
# rebuilt only when the tool's sources, the Go toolchain or containerd change.
#
#   benchmarks/gobuild.sh TOOL          # build if needed, print the binary path
#   source benchmarks/gobuild.sh; bench_gobuild TOOL
#
# Env: OBDSNAP_BUILD_DIR (default <repo>/.build), GOCODE (default /usr/share/gocode).

_bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_bench_repo="$(cd "$_bench_dir/.." && pwd)"

# bench_gobuild TOOL: prints the path of benchmarks/TOOL's binary on stdout;
# build output goes to stderr.
bench_gobuild() {
  local tool=${1:?usage: bench_gobuild TOOL}
  local srcdir="$_bench_dir/$tool"
  local build="${OBDSNAP_BUILD_DIR:-$_bench_repo/.build}/benchmarks"
  local gocode="${GOCODE:-/usr/share/gocode}"
  local pkg="obdsnapbench/$tool"
  local binary="$build/bin/$tool" sum gocache rc=0

  [ -d "$srcdir" ] && compgen -G "$srcdir/*.go" >/dev/null ||
    { echo "bench_gobuild: no Go sources in $srcdir" >&2; return 1; }
  command -v go >/dev/null ||
    { echo "go not found (apt-get install golang-go)" >&2; return 1; }
  [ -d "$gocode/src/github.com/containerd/containerd/snapshots/proxy" ] ||
    { echo "containerd sources not found in $gocode (apt-get install golang-github-containerd-containerd-dev)" >&2; return 1; }

  mkdir -p "$build/bin"
  # One builder at a time: compare.sh and memory.py may race for the cache.
  exec 8>"$build/.lock"
  flock 8
  sum=$({ go version
          cat "$gocode/src/github.com/containerd/containerd/version/version.go"
          cd "$srcdir" && sha256sum -- *.go
        } | sha256sum | cut -d' ' -f1)
  if [ ! -x "$binary" ] || [ "$(cat "$binary.sum" 2>/dev/null)" != "$sum" ]; then
    echo "building $pkg -> $binary" >&2
    # A private GOPATH entry holds a copy of the sources; containerd and its
    # dependencies resolve from the second entry, the Debian gocode tree.
    local gopath_src="$build/gopath/src/$pkg"
    rm -rf "$gopath_src" && mkdir -p "$gopath_src" && cp "$srcdir"/*.go "$gopath_src/"
    gocache="${GOCACHE:-$(go env GOCACHE 2>/dev/null || true)}"
    if [ -z "$gocache" ] || [ "$gocache" = off ]; then gocache="$build/go-cache"; fi
    (cd "$build" && GO111MODULE=off GOFLAGS= GOCACHE="$gocache" \
      GOPATH="$build/gopath:$gocode" go build -o "$binary.new" "$pkg") >&2 || rc=$?
    if [ "$rc" = 0 ]; then
      mv -f "$binary.new" "$binary"
      echo "$sum" >"$binary.sum"
    fi
  fi
  exec 8>&-
  [ "$rc" = 0 ] || return "$rc"
  echo "$binary"
}

# Executed rather than sourced: build the named tool.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  [ $# -eq 1 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
  bench_gobuild "$1"
fi
