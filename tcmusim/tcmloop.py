"""``target/loopback``: tcm_loop targets, and the SCSI disks their LUNs export.

Modelled on tcm_loop.c: ``loopback/<wwn>/tpgt_<T>`` is a target port group on
the WWN's own SCSI host; writing an initiator name to ``nexus`` makes
``address`` (``host:0:T``) appear; a link ``.../tpgt_<T>/lun/lun_<L>/<link>``
-> a device exports it as SCSI disk ``host:0:T:L``, which shows up in sysfs
after the appearance delay, named after the loop device that serves it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from typing import TYPE_CHECKING

from tcmusim.configtree import TREE_LOCK, Group
from tcmusim.fusemount import fs_error
from tcmusim.sysfs import Disk, ScsiAddress
from tcmusim.tcmu import TcmuDevice

if TYPE_CHECKING:
    from tcmusim.target import Kernel

log = logging.getLogger("tcmusim.target")

TPGS_PER_HBA = 32
_TPGT = re.compile(r"^tpgt_(\d+)$")
_LUN = re.compile(r"^lun_(\d+)$")
_WWN_PREFIXES = ("naa.", "fc.", "iqn.")


class LoopbackFabric(Group):
    """``target/loopback``: present from the start (tcm_loop loaded)."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__("loopback")
        self.kernel = kernel
        self.attribute("version", show=lambda: "TCM Loopback Fabric module v2.1 on Linux\n")

    def make_group(self, name: str) -> Group:
        if not name.startswith(_WWN_PREFIXES) or len(name) > 256:
            raise fs_error(errno.EINVAL, "WWN must start with naa., fc. or iqn.")
        wwn = LoopbackWwn(self.kernel, name)
        with self.kernel.lock:
            self.kernel.wwns.add(wwn)
        return wwn


class LoopbackWwn(Group):
    """``loopback/<wwn>``: a tcm_loop HBA, with its own SCSI host."""

    def __init__(self, kernel: Kernel, name: str) -> None:
        super().__init__(name)
        self.kernel = kernel
        self.prefix = name.split(".", 1)[0] + "."
        self.host = kernel.new_host()
        kernel.sysfs.add_host(self.host)
        self.default_group(Group("fabric_statistics"))

    def make_group(self, name: str) -> Group:
        match = _TPGT.match(name)
        if match is None or int(match.group(1)) >= TPGS_PER_HBA:
            raise fs_error(errno.EINVAL, "TPG names are tpgt_<0..31>")
        return LoopbackTpg(self, name, int(match.group(1)))

    def dropped(self) -> None:
        with self.kernel.lock:
            self.kernel.wwns.discard(self)
        self.kernel.sysfs.remove_host(self.host)


class LoopbackTpg(Group):
    def __init__(self, wwn: LoopbackWwn, name: str, tpgt: int) -> None:
        super().__init__(name)
        self.wwn = wwn
        self.tpgt = tpgt
        self.nexus: str | None = None
        self.online = True
        self.attribute("nexus", show=self._show_nexus, store=self._store_nexus)
        self.attribute(
            "transport_status",
            show=lambda: "online\n" if self.online else "offline\n",
            store=self._store_status,
        )
        self.luns = LunsGroup(self)
        self.default_group(self.luns)
        for group in ("acls", "attrib", "auth", "np", "param"):
            self.default_group(Group(group))

    def _show_nexus(self) -> str:
        if self.nexus is None:
            raise fs_error(errno.ENODEV)
        return self.nexus + "\n"

    def _store_nexus(self, text: str) -> None:
        name = text.rstrip("\n")
        with TREE_LOCK:
            if name == "NULL":
                if self.nexus is None:
                    raise fs_error(errno.ENODEV)
                if any(lun.export is not None for lun in self.luns.luns()):
                    raise fs_error(errno.EPERM, "active LUNs")
                self.nexus = None
                self.remove_attribute("address")
                return
            if not name or len(name) > 256:
                raise fs_error(errno.EINVAL)
            if not name.startswith(self.wwn.prefix):
                raise fs_error(errno.EINVAL, "initiator port does not match the target's protocol")
            if self.nexus is not None:
                raise fs_error(errno.EEXIST)
            self.nexus = name
            self.attribute("address", show=self._show_address)
        log.info("%s/%s: nexus %s, address %s", self.wwn.name, self.name, name, self._address())

    def _address(self) -> str:
        return f"{self.wwn.host}:0:{self.tpgt}"

    def _show_address(self) -> str:
        return self._address() + "\n"

    def _store_status(self, text: str) -> None:
        value = text.strip()
        if value not in ("online", "offline"):
            raise fs_error(errno.EINVAL)
        self.online = value == "online"


class LunsGroup(Group):
    def __init__(self, tpg: LoopbackTpg) -> None:
        super().__init__("lun")
        self.tpg = tpg

    def make_group(self, name: str) -> Group:
        match = _LUN.match(name)
        if match is None:
            raise fs_error(errno.EINVAL, "LUN names are lun_<N>")
        return Lun(self.tpg, name, int(match.group(1)))

    def luns(self) -> list[Lun]:
        return [child for child in self.children.values() if isinstance(child, Lun)]


class Lun(Group):
    def __init__(self, tpg: LoopbackTpg, name: str, lun: int) -> None:
        super().__init__(name)
        self.tpg = tpg
        self.lun = lun
        self.export: ScsiExport | None = None
        self._unexported: list[ScsiExport] = []  # dropped under the tree lock, removed after
        for attribute in ("alua_tg_pt_gp", "alua_tg_pt_offline", "alua_tg_pt_status"):
            self.attribute(attribute, show=lambda: "0\n", store=lambda text: None)
        self.default_group(Group("statistics"))

    def allow_link(self, name: str, target: Group) -> None:
        if not isinstance(target, TcmuDevice):
            raise fs_error(errno.EFAULT, "not a device")
        if self.export is not None:
            raise fs_error(errno.EEXIST, "port symlink already exists")
        backing = target.backing
        if target.state != "enabled" or backing is None:
            raise fs_error(errno.ENODEV, "device not configured")
        if target.export is not None:
            raise fs_error(errno.EBUSY, "the simulator exports a device on one LUN only")
        kernel = target.kernel
        address = ScsiAddress(self.tpg.wwn.host, 0, self.tpg.tpgt, self.lun)
        disk = Disk(address, backing.loop.name, backing.size, backing.read_only)
        export = ScsiExport(kernel, target.qualified_name, disk)
        self.export = target.export = export
        with kernel.lock:
            kernel.exports.add(export)
        export.start()

    def drop_link(self, name: str, target: Group) -> None:
        export = self.export
        self.export = None
        if isinstance(target, TcmuDevice):
            target.export = None
        if export is not None:
            with export.kernel.lock:
                export.kernel.exports.discard(export)
            self._unexported.append(export)

    def link_dropped(self, name: str, target: Group) -> None:
        # The disk leaves sysfs outside the tree lock: other configfs calls go on meanwhile.
        while self._unexported:
            self._unexported.pop().remove()


class ScsiExport:
    """A device exported on a LUN: its SCSI disk in sysfs, after the appearance delay."""

    def __init__(self, kernel: Kernel, device: str, disk: Disk) -> None:
        self.kernel = kernel
        self.device = device
        self.disk = disk
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._holder: threading.Timer | None = None
        self._held: int | None = None
        self._published = False
        self._removed = False

    def start(self) -> None:
        knobs = self.kernel.knobs.for_device(self.device)
        if knobs.never_appear:
            log.info("%s: disk %s will never appear (fault)", self.device, self.disk.address)
            return
        if knobs.appear_delay <= 0:
            self._publish()
            return
        with self._lock:
            self._timer = threading.Timer(knobs.appear_delay, self._publish)
            self._timer.daemon = True
            self._timer.start()

    def _publish(self) -> None:
        busy_for = self.kernel.knobs.for_device(self.device).busy_after_appear
        with self._lock:
            if self._removed:
                return
            if busy_for > 0:
                self._hold_exclusively(busy_for)
            self.kernel.sysfs.add_disk(self.disk)
            self._published = True

    def _hold_exclusively(self, seconds: float) -> None:
        """Keep the disk open O_EXCL for ``seconds``, as a prober of a new disk does."""
        path = f"/dev/{self.disk.name}"
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("%s: cannot hold %s: %s", self.device, path, exc)
            return
        log.info("%s: %s held exclusively for %.2fs (fault)", self.device, path, seconds)
        self._held = descriptor
        self._holder = threading.Timer(seconds, self._let_go)
        self._holder.daemon = True
        self._holder.start()

    def _let_go(self) -> None:
        with self._lock:
            descriptor, self._held = self._held, None
        if descriptor is not None:
            os.close(descriptor)

    def remove(self) -> None:
        with self._lock:
            self._removed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._holder is not None:
                self._holder.cancel()
            if self._published:
                self.kernel.sysfs.remove_disk(self.disk)
                self._published = False
        self._let_go()
