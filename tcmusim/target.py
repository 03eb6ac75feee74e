"""The kernel's objects under configfs ``target/``: TCMU devices and tcm_loop targets.

Modelled on target_core_configfs.c, target_core_user.c and tcm_loop.c:

- ``target/core/user_<N>/<dev>``: a TCMU device. ``control`` takes
  ``key=value`` options (``dev_config``, ``max_data_area_mb``, ...), writing
  ``1`` to ``enable`` has overlaybd-tcmu open the image and blocks until it did;
- ``target/loopback/<wwn>/tpgt_<T>``: a tcm_loop target port group on its own
  SCSI host; writing an initiator name to ``nexus`` makes ``address``
  (``host:0:T``) appear;
- ``.../tpgt_<T>/lun/lun_<L>/<link>`` -> a device exports it as SCSI disk
  ``host:0:T:L``, which shows up in sysfs after the appearance delay, named
  after the loop device that serves it.
"""

from __future__ import annotations

import errno
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable

from tcmusim.configfs import TREE_LOCK, Group
from tcmusim.fusemount import fs_error
from tcmusim.knobs import Knobs
from tcmusim.overlaybd import Backing, OpenError, Overlaybd
from tcmusim.sysfs import Disk, ScsiAddress, Sysfs

log = logging.getLogger("tcmusim.target")

FIRST_HOST = 3
TCMU_CONFIG_LEN = 256  # dev_config is silently cut to 255 bytes, as the kernel does
TPGS_PER_HBA = 32
_HBA = re.compile(r"^(user|fileio|iblock|pscsi|rd_mcp)_(\d+)$")
_TPGT = re.compile(r"^tpgt_(\d+)$")
_LUN = re.compile(r"^lun_(\d+)$")
_WWN_PREFIXES = ("naa.", "fc.", "iqn.")


def _constant(text: str) -> Callable[[], str]:
    return lambda: text


def _parse_uint(text: str) -> int:
    value = text.strip()
    if not value.isdigit():
        raise fs_error(errno.EINVAL)
    return int(value)


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


class CoreGroup(Group):
    def __init__(self, kernel: Kernel) -> None:
        super().__init__("core")
        self.kernel = kernel
        self.default_group(Group("alua"))

    def make_group(self, name: str) -> Group:
        match = _HBA.match(name)
        if match is None:
            raise fs_error(errno.EINVAL, "HBA names are <plugin>_<id>")
        if match.group(1) != "user":
            raise fs_error(errno.EINVAL, f"backend {match.group(1)!r} not simulated")
        return UserHba(self.kernel, name, int(match.group(2)))


class UserHba(Group):
    def __init__(self, kernel: Kernel, name: str, hba_id: int) -> None:
        super().__init__(name)
        self.kernel = kernel
        self.attribute("hba_info", show=lambda: f"HBA Index: {hba_id} plugin: user version: v5.0\n")
        self.attribute("hba_mode", show=lambda: "0\n", store=lambda text: None)

    def make_group(self, name: str) -> Group:
        device = TcmuDevice(self.kernel, name)
        with self.kernel.lock:
            self.kernel.devices.add(device)
        return device


class TcmuDevice(Group):
    """``core/user_<N>/<name>``: one TCMU device, served by overlaybd-tcmu once enabled."""

    def __init__(self, kernel: Kernel, name: str) -> None:
        super().__init__(name)
        self.kernel = kernel
        self._lock = threading.Lock()
        self.state = "disabled"  # disabled | enabling | enabled
        self.backing: Backing | None = None
        self.export: ScsiExport | None = None
        self.dev_config = ""
        self.dev_size = 0
        self.max_data_area_mb = 8
        self.udev_path = ""
        self.alias = ""
        self._eagain_answered = 0
        self.attribute("control", store=self._store_control)
        self.attribute(
            "enable", show=lambda: f"{int(self.state == 'enabled')}\n", store=self._enable
        )
        self.attribute("info", show=self._info)
        self.attribute("udev_path", show=lambda: self.udev_path + "\n", store=self._store_udev)
        self.attribute("alias", show=lambda: self.alias + "\n", store=self._store_alias)
        self.attribute("alua_lu_gp", show=lambda: "LU Group Alias: default_lu_gp\nLU Group ID: 0\n")
        self.attrib = TcmuAttrib(self)
        self.default_group(self.attrib)
        for group in ("pr", "statistics", "wwn", "alua"):
            self.default_group(Group(group))

    # -- attributes -------------------------------------------------------------------

    def _store_control(self, text: str) -> None:
        for token in re.split(r"[,\n]", text):
            key, _, value = token.strip().partition("=")
            if not key:
                continue
            if key == "dev_config":
                if len(value) >= TCMU_CONFIG_LEN:
                    log.warning("%s: dev_config cut to %d bytes", self.name, TCMU_CONFIG_LEN - 1)
                self.dev_config = _cut_dev_config(value)
            elif key == "dev_size":
                self.dev_size = _parse_uint(value)
            elif key == "max_data_area_mb":
                self.set_max_data_area(value)
            elif key in ("nl_reply_supported", "hw_block_size", "hw_max_sectors"):
                _parse_uint(value.lstrip("-"))
            else:
                log.info("%s: control option %r ignored", self.name, key)

    def set_max_data_area(self, value: str) -> None:
        size = _parse_uint(value)
        if size == 0 or self.state != "disabled":
            raise fs_error(errno.EINVAL, "cannot set max_data_area_mb after enable")
        self.max_data_area_mb = size

    def _store_udev(self, text: str) -> None:
        self.udev_path = text.rstrip("\n")

    def _store_alias(self, text: str) -> None:
        self.alias = text.rstrip("\n")

    def _info(self) -> str:
        status = "ACTIVATED" if self.state == "enabled" else "DEACTIVATED"
        size = self.backing.size if self.backing else self.dev_size
        return (
            f"Status: {status}  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 128\n"
            f"        Config: {self.dev_config or 'NULL'} Size: {size} "
            f"MaxDataAreaMB: {self.max_data_area_mb} DataPagesPerBlk: 4\n"
        )

    def _enable(self, text: str) -> None:
        if _parse_uint(text) != 1:
            raise fs_error(errno.EINVAL, "enable takes 1")
        knobs = self.kernel.knobs.for_device(self.name)
        with self._lock:
            if self.dead:
                raise fs_error(errno.ENODEV)
            if self.state == "enabled":
                raise fs_error(errno.EEXIST)
            if self.state == "enabling":
                raise fs_error(errno.EBUSY)
            if self._eagain_answered < knobs.eagain:
                self._eagain_answered += 1
                log.info("%s: EAGAIN %d of %d", self.name, self._eagain_answered, knobs.eagain)
                raise fs_error(errno.EAGAIN)
            if not self.dev_config:
                raise fs_error(errno.EINVAL, "no dev_config")
            self.state = "enabling"
        started = time.monotonic()
        try:
            backing = self.kernel.overlaybd.open(
                self.name, self.dev_config, knobs, self.kernel.stopping
            )
        except OpenError as exc:
            with self._lock:
                self.state = "disabled"
            log.warning("%s: open failed: %s", self.name, exc.reason)
            raise fs_error(exc.errno, exc.reason) from exc
        except Exception:
            with self._lock:
                self.state = "disabled"
            log.exception("%s: open crashed", self.name)
            raise fs_error(errno.EIO) from None
        with self._lock:
            self.backing, self.state = backing, "enabled"
        log.info(
            "%s: enabled on %s in %.1f ms",
            self.name,
            backing.loop.path,
            (time.monotonic() - started) * 1000,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def before_drop(self) -> None:
        with self._lock:
            if self.state == "enabling":
                raise fs_error(errno.EBUSY, "enable in progress")

    def dropped(self) -> None:
        with self.kernel.lock:
            self.kernel.devices.discard(self)
        self.release()

    def release(self) -> None:
        with self._lock:
            backing, self.backing = self.backing, None
            self.state = "disabled"
        if backing is not None:
            backing.release()
            log.info("%s: released %s", self.name, backing.loop.path)


class TcmuAttrib(Group):
    """``<dev>/attrib``: the device attributes TCMU adds to the generic ones."""

    def __init__(self, device: TcmuDevice) -> None:
        super().__init__("attrib")
        self.device = device
        self.values = {
            "cmd_time_out": 30,
            "qfull_time_out": -1,
            "nl_reply_supported": 0,
            "emulate_write_cache": 0,
            "block_size": 512,
            "queue_depth": 128,
        }
        for name in self.values:
            self.attribute(name, show=self._shower(name), store=self._storer(name))
        for name, value in (
            ("hw_block_size", 512),
            ("hw_max_sectors", 128),
            ("hw_queue_depth", 128),
        ):
            self.attribute(name, show=_constant(f"{value}\n"))
        self.attribute(
            "max_data_area_mb",
            show=lambda: f"{device.max_data_area_mb}\n",
            store=device.set_max_data_area,
        )
        self.attribute("dev_config", show=lambda: device.dev_config + "\n", store=self._dev_config)
        self.attribute("dev_size", show=lambda: f"{device.dev_size}\n")

    def _shower(self, name: str) -> Callable[[], str]:
        return lambda: f"{self.values[name]}\n"

    def _storer(self, name: str) -> Callable[[str], None]:
        def store(text: str) -> None:
            value = text.strip()
            number = int(value) if re.fullmatch(r"-?\d+", value) else None
            if number is None:
                raise fs_error(errno.EINVAL)
            if name == "cmd_time_out" and self.device.export is not None:
                raise fs_error(errno.EINVAL, "cannot set cmd_time_out while exports exist")
            self.values[name] = number

        return store

    def _dev_config(self, text: str) -> None:
        if self.device.state != "disabled":
            raise fs_error(errno.EINVAL, "device enabled")
        self.device.dev_config = _cut_dev_config(text.rstrip("\n"))


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
        export = ScsiExport(kernel, target.name, disk)
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
            export.remove()


class ScsiExport:
    """A device exported on a LUN: its SCSI disk in sysfs, after the appearance delay."""

    def __init__(self, kernel: Kernel, device: str, disk: Disk) -> None:
        self.kernel = kernel
        self.device = device
        self.disk = disk
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
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
        with self._lock:
            if self._removed:
                return
            self.kernel.sysfs.add_disk(self.disk)
            self._published = True

    def remove(self) -> None:
        with self._lock:
            self._removed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._published:
                self.kernel.sysfs.remove_disk(self.disk)
                self._published = False


def _cut_dev_config(value: str) -> str:
    """The kernel keeps 255 bytes (not characters); a cut character reads back as U+FFFD."""
    return value.encode()[: TCMU_CONFIG_LEN - 1].decode(errors="replace")
