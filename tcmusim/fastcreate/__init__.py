"""``overlaybd-create`` in Go (``main.go``): a few ms where the Python stand-in takes tens.

Built on first use with the installed Go toolchain into the checkout's
``.build/tcmusim``, and rebuilt when its source or the toolchain changes. It
writes what :func:`tcmusim.tools.create` writes and hands every case it does not
cover to that (``TCMUSIM_PYTHON``). Without Go, the Python stand-in is used.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

PYTHON_ENV = "TCMUSIM_PYTHON"
SOURCE = Path(__file__).resolve().with_name("main.go")
BUILD_DIR = SOURCE.parents[2] / ".build" / "tcmusim"


def binary() -> Path | None:
    """The built tool (built now if needed), or None when it cannot be built here."""
    go = shutil.which("go")
    if go is None:
        return None
    try:
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        with (BUILD_DIR / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return _built(go)
    except (OSError, subprocess.SubprocessError):
        return None


def _built(go: str) -> Path | None:
    version = subprocess.run([go, "version"], capture_output=True, check=True).stdout
    key = hashlib.sha256(version + SOURCE.read_bytes()).hexdigest()[:16]
    target = BUILD_DIR / f"overlaybd-create-{key}"
    if target.exists():
        return target
    partial = target.with_suffix(".partial")
    env = {**os.environ, "GO111MODULE": "off", "CGO_ENABLED": "0"}
    env.setdefault("GOCACHE", str(BUILD_DIR / "gocache"))
    done = subprocess.run(
        [go, "build", "-o", str(partial), str(SOURCE)], capture_output=True, env=env, check=False
    )
    if done.returncode != 0:
        return None
    partial.replace(target)
    return target
