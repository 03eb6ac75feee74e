"""The simulator's life cycle: mounts, kernel objects, orderly teardown."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tcmusim.backing import ImageCache
from tcmusim.configfs import ConfigFS
from tcmusim.fusemount import FuseMount
from tcmusim.knobs import Knobs
from tcmusim.loopdev import LOOP_JOURNAL, Journal
from tcmusim.overlaybd import Overlaybd
from tcmusim.slowio import SlowIO
from tcmusim.sysfs import Sysfs
from tcmusim.target import Kernel

log = logging.getLogger("tcmusim")

CONFIGFS_FSNAME = "tcmusim-configfs"


@dataclass(frozen=True)
class Options:
    configfs: Path
    sysfs: Path
    blob_store: Path
    open_latency: float = 0.0
    appear_delay: float = 0.0
    control: Path | None = None
    state_dir: Path | None = None


class Simulator:
    def __init__(self, options: Options) -> None:
        self.options = options
        self._own_state_dir = options.state_dir is None
        self.state_dir = options.state_dir or Path(tempfile.mkdtemp(prefix="tcmusim-"))
        self.knobs = Knobs(
            options.control,
            open_latency=options.open_latency,
            appear_delay=options.appear_delay,
        )
        self.sysfs = Sysfs(options.sysfs)
        self.slowio = SlowIO(self.state_dir / "slowio", self._slow_delay)
        self.cache = ImageCache(self.state_dir / "cache")
        self.journal = Journal(self.state_dir / LOOP_JOURNAL)
        overlaybd = Overlaybd(options.blob_store, self.cache, self.slowio, self.journal)
        self.kernel = Kernel(self.sysfs, self.knobs, overlaybd)
        self.configfs = ConfigFS(self.kernel.root(), options.configfs)
        self._configfs_mount = FuseMount(
            self.configfs, options.configfs, CONFIGFS_FSNAME, "configfs"
        )
        self._started: list[str] = []

    def _slow_delay(self, device: str) -> float:
        return self.knobs.for_device(device).slow_io_ms / 1000 if device else 0.0

    def start(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.options.blob_store / "sha256").mkdir(parents=True, exist_ok=True)
            self.sysfs.prepare()
            self._started.append("sysfs")
            self.slowio.start()
            self._started.append("slowio")
            self._configfs_mount.start()
            self._started.append("configfs")
        except BaseException:
            self.stop()
            raise
        log.info(
            "configfs on %s, sysfs in %s, blobs in %s, state in %s",
            self.options.configfs,
            self.options.sysfs,
            self.options.blob_store,
            self.state_dir,
        )

    def stop(self) -> None:
        """Stop answering, detach every device, unmount, clean up."""
        self.kernel.stopping.set()
        if "configfs" in self._started:
            self._configfs_mount.stop()
        self.kernel.shutdown()
        if "slowio" in self._started:
            self.slowio.stop()
        if "sysfs" in self._started:
            self.sysfs.clear()
        shutil.rmtree(self.state_dir / "cache", ignore_errors=True)
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self._started.clear()
        log.info("stopped")
