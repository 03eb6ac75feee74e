"""What serves an opened image: its loop device, and the shared cache of expanded layers.

A read-only device is served from the top data lower's image (each layer holds
the whole merged image), expanded once into a sparse cache file that every
device serving that layer shares; a writable device is the upper's data file
itself. Either way a loop device is bound to it, and released with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tcmusim import layerfmt, loopdev

log = logging.getLogger("tcmusim.overlaybd")


class ServedLayer(Protocol):
    """A lower that can be served: a committed layer, or a TurboOCI lower."""

    @property
    def path(self) -> str: ...

    @property
    def stat(self) -> os.stat_result: ...

    @property
    def uuid(self) -> str: ...

    @property
    def virtual_size(self) -> int: ...

    def unpack_into(self, dst: int, dst_base: int) -> None: ...


@dataclass
class Backing:
    """An opened image: the loop device serving it and what to release after it."""

    device: str
    loop: loopdev.LoopDevice
    size: int
    read_only: bool
    layers: list[str]
    _cleanups: list[Callable[[], None]] = field(default_factory=list)
    _journal: loopdev.Journal = field(default_factory=lambda: loopdev.Journal(None))

    def release(self) -> None:
        try:
            loopdev.detach(self.loop)
            self._journal.detached(self.loop)
        except loopdev.LoopError as exc:
            log.error("%s: detaching %s failed: %s", self.device, self.loop.path, exc)
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except OSError as exc:
                log.error("%s: release failed: %s", self.device, exc)
        self._cleanups.clear()


class ImageCache:
    """Sparse expanded images of committed layers, shared by the devices serving them."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Path, int, threading.Lock]] = {}

    def acquire(self, layer: ServedLayer) -> Path:
        st = layer.stat
        identity = f"{os.path.realpath(layer.path)}:{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"
        key = hashlib.sha256(identity.encode()).hexdigest()[:24]
        with self._lock:
            path, count, lock = self._entries.get(
                key, (self._dir / f"{key}.img", 0, threading.Lock())
            )
            self._entries[key] = (path, count + 1, lock)
        with lock:
            if not path.exists():
                self._dir.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(".partial")
                fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.ftruncate(fd, layer.virtual_size)
                    layer.unpack_into(fd, 0)
                finally:
                    os.close(fd)
                os.replace(partial, path)
                log.info("expanded %s into %s", layer.path, path)
        return path

    def release(self, path: Path) -> None:
        with self._lock:
            for key, (entry_path, count, lock) in list(self._entries.items()):
                if entry_path == path:
                    if count > 1:
                        self._entries[key] = (entry_path, count - 1, lock)
                    else:
                        del self._entries[key]
                        layerfmt.remove_quietly(path)
                    return
