"""Loop devices (util-linux losetup): the real block devices under the simulated disks."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tcmusim.loop")

# losetup --find picks a free device and then binds it; two at once can pick the same one.
_SETUP_LOCK = threading.Lock()
_ATTEMPTS = 5
LOOP_JOURNAL = "loops.log"  # in the simulator's state dir


class LoopError(Exception):
    pass


@dataclass(frozen=True)
class LoopDevice:
    path: str  # /dev/loopN

    @property
    def name(self) -> str:
        return Path(self.path).name


def _losetup(*args: str) -> str:
    try:
        done = subprocess.run(
            ["losetup", *args], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoopError(f"losetup {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise LoopError(done.stderr.strip() or f"losetup exited with {done.returncode}")
    return done.stdout.strip()


def attach(backing: str, *, offset: int, sizelimit: int, read_only: bool) -> LoopDevice:
    args = ["--find", "--show", "--offset", str(offset), "--sizelimit", str(sizelimit)]
    if read_only:
        args.append("--read-only")
    started = time.monotonic()
    for attempt in range(1, _ATTEMPTS + 1):
        with _SETUP_LOCK:
            try:
                device = LoopDevice(_losetup(*args, backing))
                break
            except LoopError as exc:
                if attempt == _ATTEMPTS or "busy" not in str(exc).lower():
                    raise
                log.warning("losetup: %s, retrying", exc)
        time.sleep(0.05 * attempt)
    log.info(
        "loop %s <- %s (offset %d, size %d, %s) in %.1f ms",
        device.path,
        backing,
        offset,
        sizelimit,
        "ro" if read_only else "rw",
        (time.monotonic() - started) * 1000,
    )
    return device


def detach(device: LoopDevice) -> None:
    """Detach; a device still open (mounted) is left to autoclear by the kernel."""
    started = time.monotonic()
    try:
        _losetup("--detach", device.path)
    except LoopError as exc:
        if "No such device" in str(exc) or "No such file" in str(exc):
            return
        raise
    log.info("loop %s detached in %.1f ms", device.path, (time.monotonic() - started) * 1000)


class Journal:
    """An append-only record of the loop devices bound and freed (``attach DEV FILE``)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()

    def _append(self, line: str) -> None:
        if self._path is None:
            return
        with self._lock, self._path.open("a") as f:
            f.write(line + "\n")

    def attached(self, device: LoopDevice, backing: str) -> None:
        self._append(f"attach {device.path} {os.path.realpath(backing)}")

    def detached(self, device: LoopDevice) -> None:
        self._append(f"detach {device.path}")


def journal_backing_files(path: Path) -> set[str]:
    """Every backing file a journal says was bound."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return set()
    return {line.split(" ", 2)[2] for line in lines if line.startswith("attach ")}


def backing_files() -> dict[str, str]:
    """Every bound loop device and its backing file (as the kernel reports it)."""
    found: dict[str, str] = {}
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        found[f"/dev/{entry.name}"] = backing
    return found


def devices_backed_under(*roots: Path) -> list[str]:
    """Loop devices whose backing file lies under one of ``roots``."""
    prefixes = [str(root.resolve()).rstrip("/") + "/" for root in roots]
    return sorted(
        device
        for device, backing in backing_files().items()
        if any(backing.startswith(prefix) for prefix in prefixes)
    )
