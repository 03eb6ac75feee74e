"""Running an mfusepy filesystem in a thread of this process, multithreaded."""

from __future__ import annotations

import errno
import functools
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

# mfusepy binds whichever libfuse find_library('fuse') finds first; we want libfuse3.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # type: ignore[import-untyped]

logging.getLogger("mfusepy").setLevel(logging.WARNING)

# Workers that may block at once (enable writes block for the whole image open).
MAX_THREADS = 128
ENTRY_TIMEOUT_S = 1.0

F = TypeVar("F", bound=Callable[..., Any])


class FuseOps:
    """Base of our operation classes: configures libfuse on INIT and signals readiness."""

    use_ns = True

    def __init__(self) -> None:
        self.mounted = threading.Event()

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        if config is not None:
            # configfs semantics: no attribute or absence cached, every read/write reaches us
            # at once. Entries are kept a while (configfs lives in the dcache): only our own
            # mkdir/rmdir/symlink/unlink, which the kernel sees, remove them, and the shared
            # part of a path (target/core/HBA) is looked up once, not on every access.
            config.direct_io = 1
            config.entry_timeout = ENTRY_TIMEOUT_S
            config.attr_timeout = 0.0
            config.negative_timeout = 0.0
            config.hard_remove = 1
        self.mounted.set()


def traced(logger: logging.Logger, level: int = logging.INFO) -> Callable[[F], F]:
    """Log an operation with its arguments, outcome and duration."""

    def decorate(method: F) -> F:
        name = method.__name__

        @functools.wraps(method)
        def wrapper(self: object, *args: Any) -> Any:
            started = time.monotonic()
            try:
                result = method(self, *args)
            except OSError as exc:
                # A failed lookup is routine; other failures are worth seeing.
                failure_level = level if exc.errno == errno.ENOENT else max(level, logging.INFO)
                if logger.isEnabledFor(failure_level):
                    logger.log(
                        failure_level,
                        "%s(%s) -> %s (%.1f ms)%s",
                        name,
                        _shown(args),
                        errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                        (time.monotonic() - started) * 1000,
                        f": {exc.strerror}" if exc.strerror else "",
                    )
                raise
            if logger.isEnabledFor(level):
                logger.log(
                    level,
                    "%s(%s) -> %s (%.1f ms)",
                    name,
                    _shown(args),
                    _short(result),
                    (time.monotonic() - started) * 1000,
                )
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _shown(args: tuple[Any, ...]) -> str:
    return ", ".join(_short(a) for a in args)


def _short(value: object) -> str:
    if isinstance(value, bytes):
        text = repr(value[:64])
        return text + ("..." if len(value) > 64 else "")
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return f"[{len(value)} entries]"
    return repr(value)


def fs_error(code: int, message: str = "") -> OSError:
    return OSError(code, message or os.strerror(code))


class FuseMount:
    """A filesystem served by libfuse's multithreaded loop in a daemon thread."""

    def __init__(self, ops: FuseOps, mountpoint: Path, fsname: str, subtype: str) -> None:
        self.ops = ops
        self.mountpoint = mountpoint
        self.fsname = fsname
        self._subtype = subtype
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        clear_stale_mount(self.mountpoint, self.fsname)
        self._thread = threading.Thread(
            target=self._serve, name=f"fuse-{self._subtype}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not (self.ops.mounted.is_set() and os.path.ismount(self.mountpoint)):
            if not self._thread.is_alive():
                raise RuntimeError(f"FUSE mount on {self.mountpoint} failed: {self._error}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"FUSE mount on {self.mountpoint} not up after {timeout}s")
            time.sleep(0.01)

    def _serve(self) -> None:
        try:
            mfusepy.FUSE(
                self.ops,
                str(self.mountpoint),
                foreground=True,
                allow_other=True,
                fsname=self.fsname,
                subtype=self._subtype,
                max_threads=MAX_THREADS,
                max_idle_threads=16,
            )
        except BaseException as exc:
            self._error = exc
            logging.getLogger("tcmusim.fuse").error(
                "FUSE loop on %s ended: %s", self.mountpoint, exc
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        if os.path.ismount(self.mountpoint):
            done = subprocess.run(
                ["umount", str(self.mountpoint)], capture_output=True, check=False
            )
            if done.returncode != 0:
                # Still in use (an open fd, a cwd): detach it from the namespace anyway.
                subprocess.run(
                    ["umount", "-l", str(self.mountpoint)], capture_output=True, check=False
                )
        self._thread.join(timeout)
        self._thread = None


def clear_stale_mount(mountpoint: Path, fsname: str) -> None:
    """A mount of ours left by a killed simulator (ENOTCONN) is lazily unmounted."""
    target = str(mountpoint.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields = before.split()
        source = after.split()[1] if len(after.split()) > 1 else ""
        if len(fields) > 4 and _unescape(fields[4]) == target:
            if source != fsname:
                raise RuntimeError(f"{mountpoint} is already a mount point (of {source})")
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def _unescape(field: str) -> str:
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )
