"""``target/core/user_<N>/<dev>``: TCMU devices, as target_core_user.c makes them.

``control`` takes ``key=value`` options (``dev_config``, ``max_data_area_mb``,
...); writing ``1`` to ``enable`` has overlaybd-tcmu open the image and blocks
until it did.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tcmusim.backing import Backing
from tcmusim.configtree import Group
from tcmusim.fusemount import fs_error
from tcmusim.overlaybd import OpenError

if TYPE_CHECKING:
    from tcmusim.target import Kernel
    from tcmusim.tcmloop import ScsiExport

log = logging.getLogger("tcmusim.target")

TCMU_CONFIG_LEN = 256  # dev_config is silently cut to 255 bytes, as the kernel does
_HBA = re.compile(r"^(user|fileio|iblock|pscsi|rd_mcp)_(\d+)$")


def _constant(text: str) -> Callable[[], str]:
    return lambda: text


def _parse_uint(text: str) -> int:
    value = text.strip()
    if not value.isdigit():
        raise fs_error(errno.EINVAL)
    return int(value)


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
        device = TcmuDevice(self.kernel, name, self.name)
        with self.kernel.lock:
            self.kernel.devices.add(device)
        return device


class TcmuDevice(Group):
    """``core/user_<N>/<name>``: one TCMU device, served by overlaybd-tcmu once enabled."""

    def __init__(self, kernel: Kernel, name: str, hba: str) -> None:
        super().__init__(name)
        self.kernel = kernel
        self.qualified_name = f"{hba}/{name}"  # what knobs may name it by
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
        knobs = self.kernel.knobs.for_device(self.qualified_name)
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
            if knobs.enable_errno:
                log.info("%s: enable fails with errno %d (fault)", self.name, knobs.enable_errno)
                raise fs_error(knobs.enable_errno)
            if not self.dev_config:
                raise fs_error(errno.EINVAL, "no dev_config")
            self.state = "enabling"
        started = time.monotonic()
        try:
            backing = self.kernel.overlaybd.open(
                self.name, _without_devid(self.dev_config), knobs, self.kernel.stopping
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


def _without_devid(cfgstring: str) -> str:
    """overlaybd-tcmu's handler takes ``overlaybd/<config>[;<devid>]``: the config part."""
    return cfgstring.partition(";")[0]


def _cut_dev_config(value: str) -> str:
    """The kernel keeps 255 bytes (not characters); a cut character reads back as U+FFFD."""
    return value.encode()[: TCMU_CONFIG_LEN - 1].decode(errors="replace")
