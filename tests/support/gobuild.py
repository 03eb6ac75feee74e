"""Build a Go program of the tests in GOPATH mode against Debian's containerd sources.

No module proxy and no network: containerd 1.6 and its dependencies (bbolt
among them) resolve from the Debian gocode tree. A binary is cached under
``<repo>/.build/go/<name>`` and built again only when its sources, Go or
containerd change.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from support.processes import run

REPO_ROOT = Path(__file__).resolve().parents[2]
GOCODE = Path(os.environ.get("GOCODE") or "/usr/share/gocode")
CONTAINERD_SOURCES = GOCODE / "src/github.com/containerd/containerd"


def go_unavailable() -> str | None:
    """Why Go programs against containerd cannot be built here, or None."""
    if shutil.which("go") is None:
        return "go not found (apt-get install golang-go)"
    if not (CONTAINERD_SOURCES / "client.go").is_file():
        return (
            f"containerd's Go sources missing in {GOCODE} "
            "(apt-get install golang-github-containerd-containerd-dev)"
        )
    return None


def build_go_program(source_dir: Path, name: str) -> Path:
    """The binary of the main package in ``source_dir``; skips the test where Go is missing."""
    reason = go_unavailable()
    if reason is not None:
        pytest.skip(reason)
    build = Path(os.environ.get("OBDSNAP_BUILD_DIR") or REPO_ROOT / ".build") / "go"
    build.mkdir(parents=True, exist_ok=True)
    binary = build / name
    sources = sorted(source_dir.glob("*.go"))
    fingerprint = hashlib.sha256()
    fingerprint.update(_go(["go", "version"], build).encode())
    fingerprint.update((CONTAINERD_SOURCES / "version/version.go").read_bytes())
    for source in sources:
        fingerprint.update(source.name.encode() + source.read_bytes())
    stamp = build / f"{name}.sum"
    with (build / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file() and stamp.is_file() and stamp.read_text() == fingerprint.hexdigest():
            return binary
        package = f"obdsnaptests/{name}"
        copy = build / "gopath/src" / package
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir(parents=True)
        for source in sources:
            shutil.copyfile(source, copy / source.name)
        _go(["go", "build", "-o", f"{binary}.new", package], build)
        os.replace(f"{binary}.new", binary)
        stamp.write_text(fingerprint.hexdigest())
    return binary


def _go(argv: list[str], build: Path) -> str:
    cache = run("go", "env", "GOCACHE", check=False, timeout=60).stdout.strip()
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOPATH": f"{build / 'gopath'}:{GOCODE}",
        "GOCACHE": cache if cache and cache != "off" else str(build / "go-cache"),
    }
    return run(*argv, cwd=build, env=env, timeout=900).stdout
