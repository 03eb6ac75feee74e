"""The kernel's objects under configfs ``target/``: TCMU devices and tcm_loop targets.

Modelled on target_core_configfs.c, target_core_user.c and tcm_loop.c:

- ``target/core/user_<N>/<dev>``: a TCMU device (:mod:`tcmusim.tcmu`).
  ``control`` takes ``key=value`` options (``dev_config``, ``max_data_area_mb``,
  ...), writing ``1`` to ``enable`` has overlaybd-tcmu open the image and
  blocks until it did;
- ``target/loopback/<wwn>/tpgt_<T>``: a tcm_loop target port group on its own
  SCSI host (:mod:`tcmusim.tcmloop`); writing an initiator name to ``nexus``
  makes ``address`` (``host:0:T``) appear;
- ``.../tpgt_<T>/lun/lun_<L>/<link>`` -> a device exports it as SCSI disk
  ``host:0:T:L``, which shows up in sysfs after the appearance delay, named
  after the loop device that serves it.

This module holds the state they share (:class:`Kernel`) and the root of the tree.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading

from tcmusim.configtree import Group
from tcmusim.fusemount import fs_error
from tcmusim.knobs import Knobs
from tcmusim.overlaybd import Overlaybd
from tcmusim.sysfs import Sysfs
from tcmusim.tcmloop import LoopbackFabric, LoopbackWwn, ScsiExport
from tcmusim.tcmu import CoreGroup, TcmuDevice

log = logging.getLogger("tcmusim.target")

FIRST_HOST = 3


class Kernel:
    """State shared by the configfs objects: sysfs, knobs, the image opener, SCSI hosts."""

    def __init__(self, sysfs: Sysfs, knobs: Knobs, overlaybd: Overlaybd) -> None:
        self.sysfs = sysfs
        self.knobs = knobs
        self.overlaybd = overlaybd
        self.stopping = threading.Event()
        self._hosts = itertools.count(FIRST_HOST)
        self.lock = threading.Lock()
        self.devices: set[TcmuDevice] = set()
        self.exports: set[ScsiExport] = set()
        self.wwns: set[LoopbackWwn] = set()

    def new_host(self) -> int:
        with self.lock:
            return next(self._hosts)

    def root(self) -> Group:
        root = Group("")
        target = root.default_group(TargetGroup(self))
        target.default_group(CoreGroup(self))
        target.default_group(LoopbackFabric(self))
        return root

    def shutdown(self) -> None:
        """Detach everything: disks out of sysfs, loop devices, SCSI hosts."""
        self.stopping.set()
        with self.lock:
            exports, devices, wwns = list(self.exports), list(self.devices), list(self.wwns)
            self.exports.clear()
            self.devices.clear()
            self.wwns.clear()
        for export in exports:
            export.remove()
        for device in devices:
            device.release()
        for wwn in wwns:
            self.sysfs.remove_host(wwn.host)
        log.info(
            "shutdown: %d disks, %d devices, %d hosts removed",
            len(exports),
            len(devices),
            len(wwns),
        )


class TargetGroup(Group):
    def __init__(self, kernel: Kernel) -> None:
        super().__init__("target")
        self.attribute("version", show=lambda: "Target Engine Core ConfigFS Infrastructure v5.0\n")
        self._dbroot = "/etc/target"
        self.attribute("dbroot", show=lambda: self._dbroot + "\n", store=self._store_dbroot)

    def _store_dbroot(self, text: str) -> None:
        self._dbroot = text.strip()

    def make_group(self, name: str) -> Group:
        raise fs_error(errno.EINVAL, f"no fabric module {name!r} in the simulator")
