"""Block devices from overlaybd-tcmu, set up through the kernel's configfs (TCMU + tcm_loop).

For snapshot N: a TCMU target ``core/user_999999999/dev_N`` whose ``dev_config``
names the snapshot's ``config.v1.json``; overlaybd-tcmu opens the image when the
target is enabled and reports in the result file. A tcm_loop LUN then turns the
target into a SCSI disk that shows up in sysfs. Every blocking step runs in the
backend's own executor; the result file is watched from the loop (read with
aiofiles on that executor), so a failed open surfaces with overlaybd's reason
as soon as overlaybd-tcmu writes it.

A device's owner token is its ``dev_config``: a device set up by the Go
snapshotter from the same root carries the same token, one set up from another
root does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiofiles

from obdsnap.blocking import BlockingRunner
from obdsnap.device.backend import AttachError, DeviceTimeout, OpenFailed
from obdsnap.errors import failure_context
from obdsnap.fsutil import write_file_no_follow
from obdsnap.layout import BlockDir

log = logging.getLogger(__name__)

HBA = 999999999
# Neither overlaybd-tcmu nor the SCSI layer may time out a command of a lazily fetched image.
COMMAND_TIMEOUT = "2147483"
MAX_DATA_AREA_MB = 4
DEVICE_THREADS = 64
DEV_CONFIG_PREFIX = "overlaybd/"
# The kernel keeps at most this much of dev_config (TCMU_CONFIG_LEN - 1).
DEV_CONFIG_MAX = 255
_INFO_CONFIG = re.compile(r"Config: (\S+)")


@dataclass(frozen=True)
class TcmuTimings:
    enable_retry_interval_s: float = 0.05
    enable_attempts: int = 100  # EAGAIN: the kernel is still busy with another target
    result_poll_interval_s: float = 0.02
    disk_poll_interval_s: float = 0.01
    disk_timeout_s: float = 10.0


class TcmuBackend:
    """Attaches and detaches overlaybd devices under a configfs and a sysfs root."""

    def __init__(self, configfs: Path, sysfs: Path, timings: TcmuTimings = TcmuTimings()) -> None:
        self._core = configfs / "target" / "core" / f"user_{HBA}"
        self._loopback = configfs / "target" / "loopback"
        self._sysfs = sysfs
        self._timings = timings
        # Its own threads: a configfs write blocks for as long as overlaybd-tcmu takes to
        # open an image, and slow images must not starve the snapshotter's file work.
        self._executor = ThreadPoolExecutor(max_workers=DEVICE_THREADS, thread_name_prefix="tcmu")
        self._blocking = BlockingRunner(self._executor)

    @property
    def core_dir(self) -> Path:
        """The HBA's directory: one ``dev_<ID>`` target in it per device."""
        return self._core

    def target_dir(self, snapshot_id: int) -> Path:
        return self._core / f"dev_{snapshot_id}"

    def loopback_dir(self, snapshot_id: int) -> Path:
        return self._loopback / wwn(snapshot_id)

    def describe(self, snapshot_id: int) -> str:
        return f"device dev_{snapshot_id}"

    async def attach(self, snapshot_id: int, block: BlockDir) -> Path:
        """Set up the device of a snapshot; its path, e.g. ``/dev/sdc``. Undone on failure."""
        config_path, result_file = block.config, block.result_file
        try:
            with failure_context(snapshot_id=snapshot_id, step="configfs"):
                await self._blocking(self._create_target, snapshot_id, config_path, result_file)
            with failure_context(snapshot_id=snapshot_id, step="open"):
                await self._enable(snapshot_id, result_file)
            with failure_context(snapshot_id=snapshot_id, step="lun"):
                address = await self._blocking(self._create_lun, snapshot_id)
            with failure_context(snapshot_id=snapshot_id, step="disk"):
                return await self._wait_for_disk(address, result_file)
        except BaseException:
            await asyncio.shield(self.detach(snapshot_id))
            raise

    async def detach(self, snapshot_id: int) -> None:
        with failure_context(snapshot_id=snapshot_id, step="configfs"):
            await self._blocking(self._remove_configfs_entries, snapshot_id)

    async def is_attached(self, snapshot_id: int) -> bool:
        link = self.loopback_dir(snapshot_id) / "tpgt_1" / "lun" / "lun_0" / f"dev_{snapshot_id}"
        return await self._blocking(link.is_symlink)

    async def has_entries(self, snapshot_id: int) -> bool:
        """Whether any configfs object of the snapshot exists, complete or not."""
        target, loopback = self.target_dir(snapshot_id), self.loopback_dir(snapshot_id)
        return await self._blocking(lambda: target.exists() or loopback.exists())

    async def find_device(self, snapshot_id: int) -> Path | None:
        """The disk of an attached snapshot, from its LUN's SCSI address."""
        return await self._blocking(self.find_disk, snapshot_id)

    def owner_token(self, block: BlockDir) -> str:
        """The ``dev_config`` of a target set up from ``block``, as the kernel keeps it."""
        return dev_config(block.config)

    async def owner(self, snapshot_id: int) -> str | None:
        """The ``dev_config`` a target was set up with, as its ``info`` attribute shows it."""
        info = await self._blocking(_read_text, self.target_dir(snapshot_id) / "info")
        return info_config(info or "")

    async def attached_ids(self) -> set[int]:
        """IDs of every snapshot that has a target under the HBA."""
        return await self._blocking(self.target_ids)

    def target_ids(self) -> set[int]:
        """Blocking: IDs of every snapshot that has a target under the HBA."""
        names = _list_dir(self._core)
        return {int(name[4:]) for name in names if name.startswith("dev_") and name[4:].isdigit()}

    def read_info(self, snapshot_id: int) -> str | None:
        """Blocking: a target's ``info`` attribute, None if there is no such target."""
        return _read_text(self.target_dir(snapshot_id) / "info")

    async def mounted(self, device: Path) -> None:
        """Give the mounted disk the SCSI command timeout a lazily fetched image needs."""
        timeout_file = self._sysfs / "block" / device.name / "device" / "timeout"
        await self._blocking(_write_attribute, timeout_file, COMMAND_TIMEOUT)

    # ------------------------------------------------------------------ steps

    def _create_target(self, snapshot_id: int, config_path: Path, result_file: Path) -> None:
        target = self.target_dir(snapshot_id)
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A stale "success" from an earlier attach must not be taken for this one's.
        write_file_no_follow(result_file, b"")
        _write_attribute(target / "control", f"dev_config={dev_config(config_path)}")
        _write_attribute(target / "control", f"max_data_area_mb={MAX_DATA_AREA_MB}")

    async def _enable(self, snapshot_id: int, result_file: Path) -> None:
        """Write ``enable`` in a thread while watching the result file from the loop."""
        enabling = asyncio.ensure_future(self._write_enable(snapshot_id))
        watching = asyncio.ensure_future(self._watch_result(result_file, enabling))
        try:
            await asyncio.wait([enabling, watching], return_when=asyncio.FIRST_COMPLETED)
            if watching.done():
                watching.result()  # raises as soon as overlaybd reported a failed open
            await enabling
        except OSError as exc:
            reason = await self._read_result(result_file)
            error = OpenFailed if reason.startswith("failed") else AttachError
            raise error(
                f"failed to enable the target of snapshot {snapshot_id}: {exc.strerror}: {reason}"
            ).add_context(reason=_overlaybd_reason(reason) or str(exc.strerror)) from exc
        except AttachError:
            # The target can only be removed once the kernel has given up the enable.
            await asyncio.gather(enabling, return_exceptions=True)
            raise
        finally:
            watching.cancel()
        target = self.target_dir(snapshot_id)
        await self._blocking(_write_attribute, target / "attrib" / "cmd_time_out", COMMAND_TIMEOUT)

    async def _write_enable(self, snapshot_id: int) -> None:
        enable = self.target_dir(snapshot_id) / "enable"
        for attempt in range(self._timings.enable_attempts):
            try:
                await self._blocking(_write_attribute, enable, "1")
                return
            except BlockingIOError:
                if attempt + 1 == self._timings.enable_attempts:
                    raise
                await asyncio.sleep(self._timings.enable_retry_interval_s)

    async def _watch_result(self, result_file: Path, enabling: asyncio.Future[None]) -> None:
        """Raise AttachError as soon as the result file says ``failed:``."""
        while True:
            text = await self._read_result(result_file)
            if text.startswith("failed"):
                raise OpenFailed(f"overlaybd could not open the image: {text}").add_context(
                    reason=_overlaybd_reason(text)
                )
            if text.startswith("success") or enabling.done():
                return
            await asyncio.sleep(self._timings.result_poll_interval_s)

    async def _read_result(self, result_file: Path) -> str:
        """overlaybd's result file, stripped; "" if it is missing."""
        try:
            async with aiofiles.open(result_file, errors="replace", executor=self._executor) as f:
                return (await f.read()).strip()
        except FileNotFoundError:
            return ""

    def _create_lun(self, snapshot_id: int) -> str:
        name = wwn(snapshot_id)
        tpg = self._loopback / name / "tpgt_1"
        lun = tpg / "lun" / "lun_0"
        lun.mkdir(parents=True, exist_ok=True)
        _write_attribute(tpg / "nexus", name)
        link = lun / f"dev_{snapshot_id}"
        if not link.is_symlink():
            link.symlink_to(self.target_dir(snapshot_id))
        return (tpg / "address").read_text().strip()

    async def _wait_for_disk(self, address: str, result_file: Path) -> Path:
        disks = self._disks_dir(address)
        deadline = time.monotonic() + self._timings.disk_timeout_s
        while True:
            names = await self._blocking(_list_dir, disks)
            if names:
                return Path("/dev") / sorted(names)[0]
            text = await self._read_result(result_file)
            if text.startswith("failed"):
                raise OpenFailed(f"overlaybd could not open the image: {text}").add_context(
                    reason=_overlaybd_reason(text)
                )
            if time.monotonic() > deadline:
                raise DeviceTimeout(
                    f"disk of SCSI address {address} did not appear in {disks} "
                    f"within {self._timings.disk_timeout_s:.1f}s"
                )
            await asyncio.sleep(self._timings.disk_poll_interval_s)

    def find_disk(self, snapshot_id: int) -> Path | None:
        """Blocking: the disk of an attached snapshot, from its LUN's SCSI address."""
        try:
            address = (self.loopback_dir(snapshot_id) / "tpgt_1" / "address").read_text().strip()
        except FileNotFoundError:
            return None
        names = _list_dir(self._disks_dir(address))
        return Path("/dev") / sorted(names)[0] if names else None

    def _disks_dir(self, address: str) -> Path:
        return self._sysfs / "class" / "scsi_device" / f"{address}:0" / "device" / "block"

    def _remove_configfs_entries(self, snapshot_id: int) -> None:
        """Blocking: the loopback LUN, then the target, each step tolerating "already gone"."""
        tpg = self.loopback_dir(snapshot_id) / "tpgt_1"
        lun = tpg / "lun" / "lun_0"
        with contextlib.suppress(FileNotFoundError):
            (lun / f"dev_{snapshot_id}").unlink()
        for directory in (lun, tpg, self.loopback_dir(snapshot_id), self.target_dir(snapshot_id)):
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()


def dev_config(config_path: Path) -> str:
    """What a target's ``dev_config`` says for a device config file, as the kernel keeps it."""
    # The kernel cuts bytes, not characters; its info attribute is read back with "replace".
    value = f"{DEV_CONFIG_PREFIX}{config_path}".encode()[:DEV_CONFIG_MAX]
    return value.decode(errors="replace")


def wwn(snapshot_id: int) -> str:
    return f"naa.199{snapshot_id:013d}"


def _write_attribute(path: Path, value: str) -> None:
    """One write() of the whole value, as configfs attributes need."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        data = value.encode()
        if os.write(descriptor, data) != len(data):
            raise OSError(errno.EIO, f"short write to {path}")
    finally:
        os.close(descriptor)


def info_config(info: str) -> str | None:
    """The ``dev_config`` a target's ``info`` attribute shows, None if it has none."""
    found = _INFO_CONFIG.search(info)
    return found.group(1) if found and found.group(1) != "NULL" else None


def read_result(result_file: Path) -> str:
    """Blocking: overlaybd's result file, stripped; "" if it is missing."""
    try:
        return result_file.read_text(errors="replace").strip()
    except FileNotFoundError:
        return ""


def _overlaybd_reason(result: str) -> str:
    """The reason in overlaybd's result file (``failed:<reason>``), if it has one."""
    return result.removeprefix("failed:").strip() if result.startswith("failed") else ""


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return None


def _list_dir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
