"""Block devices from overlaybd-tcmu, set up through the kernel's configfs (TCMU + tcm_loop).

For snapshot N: a TCMU target ``core/<HBA>/dev_N`` whose ``dev_config`` names
the snapshot's ``config.v1.json`` (the HBA and the loopback WWN are the
tenant's, tcmu_names.py); overlaybd-tcmu opens the image when the
target is enabled and reports in the result file. A tcm_loop LUN then turns the
target into a SCSI disk that shows up in sysfs. Every blocking step runs in the
backend's own executor, the whole set-up in one job: target, enable, LUN and a
first look for the disk. A disk that is not there yet is waited for on inotify
(change_watch.py) of sysfs and of the result file, with a back-off beside it; the
result file is read after a failed enable and whenever that wait wakes, so every
failed open carries overlaybd's reason.

A device's owner token is its ``dev_config``: a device set up by the Go
snapshotter from the same root carries the same token, one set up from another
root does not. A loopback WWN whose LUN links a target of another HBA belongs to
another tenant (tenants 100 apart share WWNs) and is never touched.
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
from dataclasses import dataclass, field
from pathlib import Path

from obdsnap.blocking import BlockingRunner
from obdsnap.config import NO_TENANT
from obdsnap.device.backend import AttachError, DeviceTimeout, OpenFailed
from obdsnap.device.change_watch import Backoff, ChangeWatch, Waiter
from obdsnap.device.tcmu_names import TcmuNames
from obdsnap.errors import failure_context
from obdsnap.fsutil import write_file_no_follow
from obdsnap.layout import BlockDir

log = logging.getLogger(__name__)

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
    disk_backoff: Backoff = field(
        default_factory=Backoff
    )  # between looks for the disk where no change is reported
    disk_timeout_s: float = 10.0


@dataclass(frozen=True)
class DiskProbe:
    """One look for the disk of a SCSI address: its node, or overlaybd's result so far."""

    address: str
    device: Path | None
    result: str = ""
    timeout_error: str = ""  # why the disk that is there could not take the SCSI timeout


class TcmuBackend:
    """Attaches and detaches overlaybd devices under a configfs and a sysfs root."""

    def __init__(
        self,
        configfs: Path,
        sysfs: Path,
        timings: TcmuTimings = TcmuTimings(),
        *,
        tenant: int = NO_TENANT,
    ) -> None:
        self.names = TcmuNames(tenant)
        self._core = configfs / "target" / "core" / self.names.hba
        self._loopback = configfs / "target" / "loopback"
        self._sysfs = sysfs
        self._timings = timings
        # Its own threads: a configfs write blocks for as long as overlaybd-tcmu takes to
        # open an image, and slow images must not starve the snapshotter's file work.
        self._executor = ThreadPoolExecutor(max_workers=DEVICE_THREADS, thread_name_prefix="tcmu")
        self._blocking = BlockingRunner(self._executor)
        self._scsi_devices = sysfs / "class" / "scsi_device"
        self._changes = ChangeWatch(timings.disk_backoff)

    @property
    def core_dir(self) -> Path:
        """The HBA's directory: one ``dev_<ID>`` target in it per device."""
        return self._core

    def target_dir(self, snapshot_id: int) -> Path:
        return self._core / self.names.target(snapshot_id)

    def loopback_dir(self, snapshot_id: int) -> Path:
        return self._loopback / self.names.wwn(snapshot_id)

    def _lun_link(self, snapshot_id: int) -> Path:
        return self.loopback_dir(snapshot_id) / "tpgt_1/lun/lun_0" / self.names.target(snapshot_id)

    def describe(self, snapshot_id: int) -> str:
        return f"device {self.names.hba}/{self.names.target(snapshot_id)}"

    async def attach(self, snapshot_id: int, block: BlockDir) -> Path:
        """Set up the device of a snapshot; its path, e.g. ``/dev/sdc``. Undone on failure."""
        return await self.attach_config(snapshot_id, dev_config(block.config), block.result_file)

    async def attach_config(self, snapshot_id: int, config: str, result_file: Path) -> Path:
        """Set up device ``snapshot_id`` with ``dev_config`` ``config``; undone on failure."""
        await self._changes.start(self._blocking, self._scsi_devices)
        set_up = asyncio.ensure_future(
            self._blocking(self._set_up, snapshot_id, config, result_file)
        )
        try:
            probe = await asyncio.shield(set_up)
            if probe.device is not None:
                return probe.device
            with failure_context(snapshot_id=snapshot_id, step="disk"):
                return await self._wait_for_disk(probe.address, result_file)
        except BaseException:
            await asyncio.shield(self._undo_set_up(snapshot_id, set_up))
            raise

    async def _undo_set_up(self, snapshot_id: int, set_up: asyncio.Future[DiskProbe]) -> None:
        """Tear down what the set-up made, once it has ended: its thread goes on after a cancel."""
        await asyncio.wait([set_up])
        if not set_up.cancelled():
            set_up.exception()  # raised to the caller already, or not at all
        await self.detach(snapshot_id)

    def _set_up(self, snapshot_id: int, config: str, result_file: Path) -> DiskProbe:
        """Blocking: target, enable, LUN, then a first look for the disk."""
        target = self.target_dir(snapshot_id)
        with failure_context(snapshot_id=snapshot_id, step="configfs"):
            _create_target(target, config, result_file)
        with failure_context(snapshot_id=snapshot_id, step="open"):
            self._enable(target, result_file)
        with failure_context(snapshot_id=snapshot_id, step="lun"):
            address = self._create_lun(snapshot_id)
        with failure_context(snapshot_id=snapshot_id, step="disk"):
            return self._probe_disk(address, result_file)

    async def detach(self, snapshot_id: int) -> None:
        with failure_context(snapshot_id=snapshot_id, step="configfs"):
            await self._blocking(self._remove_configfs_entries, snapshot_id)

    async def is_attached(self, snapshot_id: int) -> bool:
        return await self._blocking(self._links_own_target, snapshot_id)

    async def has_entries(self, snapshot_id: int) -> bool:
        """Whether any configfs object of the snapshot exists, complete or not."""
        target = self.target_dir(snapshot_id)
        return await self._blocking(lambda: target.exists() or self._owns_loopback(snapshot_id))

    def _link_hba(self, snapshot_id: int) -> str | None:
        """Blocking: the HBA whose target the WWN's LUN links, None if no link."""
        try:
            return Path(os.readlink(self._lun_link(snapshot_id))).parent.name
        except OSError:
            return None

    def _links_own_target(self, snapshot_id: int) -> bool:
        """Blocking: whether the WWN's LUN links this HBA's target of the snapshot."""
        return self._link_hba(snapshot_id) == self.names.hba

    def _foreign_hba(self, snapshot_id: int) -> str | None:
        """Blocking: the other HBA whose target the WWN links (tenants 100 apart), if any."""
        hba = self._link_hba(snapshot_id)
        return hba if hba not in (None, self.names.hba) else None

    def _owns_loopback(self, snapshot_id: int) -> bool:
        """Blocking: the WWN exists and links no other HBA's target (a half set-up links none)."""
        exists = self.loopback_dir(snapshot_id).exists()
        return exists and self._foreign_hba(snapshot_id) is None

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
        """Blocking: IDs of every snapshot that has a target under this tenant's HBA."""
        names = _list_dir(self._core)
        return {int(name[4:]) for name in names if name.startswith("dev_") and name[4:].isdigit()}

    def read_info(self, snapshot_id: int) -> str | None:
        """Blocking: a target's ``info`` attribute, None if there is no such target."""
        return _read_text(self.target_dir(snapshot_id) / "info")

    # ------------------------------------------------------------------ steps

    def _enable(self, target: Path, result_file: Path) -> None:
        """Blocking: write ``enable`` (overlaybd-tcmu opens the image meanwhile, and says how in
        the result file), then the command timeout. A failure carries the errno and
        overlaybd's reason."""
        try:
            self._write_enable(target, result_file)
        except OSError as exc:
            raise _enable_failed(target, exc, read_result(result_file)) from exc
        _write_attribute(target / "attrib" / "cmd_time_out", COMMAND_TIMEOUT)

    def _write_enable(self, target: Path, result_file: Path) -> None:
        """Blocking: write ``enable``, again every 50 ms while the kernel answers EAGAIN (100
        times)."""
        for attempt in range(self._timings.enable_attempts):
            try:
                _write_attribute(target / "enable", "1")
                return
            except BlockingIOError as exc:
                if attempt + 1 == self._timings.enable_attempts:
                    text = read_result(result_file)
                    detail = text or f"{exc.strerror} {attempt + 1} times"
                    raise AttachError(
                        f"failed to enable target for {target}, {detail}"
                    ).add_context(reason=_overlaybd_reason(text) or str(exc.strerror)) from exc
                time.sleep(self._timings.enable_retry_interval_s)

    def _create_lun(self, snapshot_id: int) -> str:
        """Blocking: the loopback WWN, its LUN linking the target; the SCSI address."""
        name = self.names.wwn(snapshot_id)
        tpg = self._loopback / name / "tpgt_1"
        # mkdir of "loopback" loads tcm_loop if it is not yet; "lun" comes with tpgt_1.
        _make_groups(self._loopback.parent, ["loopback"])
        if not _made_group(self._loopback / name):  # a WWN made just now is nobody else's
            self._refuse_foreign_wwn(snapshot_id)
        _make_groups(self._loopback / name, ["tpgt_1", "lun/lun_0"])
        _write_attribute(tpg / "nexus", name)
        with contextlib.suppress(FileExistsError):
            os.symlink(self.target_dir(snapshot_id), self._lun_link(snapshot_id))
        return _read_attribute(tpg / "address").strip()

    def _refuse_foreign_wwn(self, snapshot_id: int) -> None:
        foreign = self._foreign_hba(snapshot_id)
        if foreign is not None:
            raise AttachError(
                f"loopback {self.names.wwn(snapshot_id)} is taken by a device of another HBA "
                f"({foreign}): tenants that differ by a multiple of 100 share the WWN prefix "
                f"{self.names.wwn_prefix}"
            )

    async def _wait_for_disk(self, address: str, result_file: Path) -> Path:
        """The disk, once it appeared and took the SCSI timeout (before any mkfs or mount).

        Looked for again when sysfs reports the disk's SCSI device, overlaybd writes
        its result file, or the back-off's delay ends (sysfs reports nothing on a
        real node). overlaybd's result is in by then as a rule: ``enable`` returned
        after the image was opened.
        """
        disk_entry = self._scsi_devices / f"{address}:0"
        with self._changes.expecting(disk_entry, result_file) as waiter:
            watch = await self._changes.watch(self._blocking, result_file.parent)
            try:
                return await self._watch_for_disk(waiter, address, result_file)
            finally:
                self._changes.unwatch(watch)

    async def _watch_for_disk(self, waiter: Waiter, address: str, result_file: Path) -> Path:
        disks = self._disks_dir(address)
        deadline = time.monotonic() + self._timings.disk_timeout_s
        last_error = ""
        while True:
            probe = await self._blocking(self._probe_disk, address, result_file)
            if probe.device is not None:
                return probe.device
            last_error = probe.timeout_error or last_error
            if probe.result.startswith("failed"):
                raise OpenFailed(f"overlaybd could not open the image: {probe.result}").add_context(
                    reason=_overlaybd_reason(probe.result)
                )
            remaining = deadline - time.monotonic()
            if remaining < 0:
                raise DeviceTimeout(
                    f"disk of SCSI address {address} did not appear in {disks} "
                    f"within {self._timings.disk_timeout_s:.1f}s{last_error}"
                )
            await waiter.wait(remaining)

    def _probe_disk(self, address: str, result_file: Path) -> DiskProbe:
        """Blocking: the disk if it is there and took the SCSI timeout (a timeout that
        cannot be written yet counts as not there yet); else the result file."""
        names = _list_dir(self._disks_dir(address))
        error = ""
        if names:
            disk = min(names)
            try:
                _write_attribute(self._timeout_file(disk), COMMAND_TIMEOUT)
                return DiskProbe(address, Path("/dev") / disk)
            except OSError as exc:
                error = f"; its SCSI timeout could not be set: {exc.strerror}"
        return DiskProbe(address, None, read_result(result_file), error)

    def _timeout_file(self, disk: str) -> Path:
        return self._sysfs / "block" / disk / "device" / "timeout"

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
        """Blocking: the loopback LUN, then the target, each step tolerating "already gone".

        Another tenant's WWN of the same name (tenants 100 apart) is left alone.
        """
        link = self._lun_link(snapshot_id)
        directories = [self.target_dir(snapshot_id)]
        if self._owns_loopback(snapshot_id):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            directories[:0] = [
                link.parent,
                link.parent.parent.parent,
                self.loopback_dir(snapshot_id),
            ]
        for directory in directories:
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()


def dev_config(config_path: Path, device_id: int | None = None) -> str:
    """What a target's ``dev_config`` says for a device config file (and, if given, a device ID
    after ``;``), as the kernel keeps it."""
    suffix = "" if device_id is None else f";{device_id}"
    # The kernel cuts bytes, not characters; its info attribute is read back with "replace".
    value = f"{DEV_CONFIG_PREFIX}{config_path}{suffix}".encode()[:DEV_CONFIG_MAX]
    return value.decode(errors="replace")


def wwn(snapshot_id: int, tenant: int = NO_TENANT) -> str:
    """The loopback WWN of a snapshot's device for ``tenant``."""
    return TcmuNames(tenant).wwn(snapshot_id)


def _enable_failed(target: Path, error: OSError, result: str) -> AttachError:
    """A write of ``enable`` failed at once: the errno, and overlaybd's reason if it gave one."""
    message = f"failed to write enable for {target}: {error.strerror}"
    if result:
        message += f": {result}"
    kind = OpenFailed if result.startswith("failed") else AttachError
    return kind(message).add_context(reason=_overlaybd_reason(result) or str(error.strerror))


def _create_target(target: Path, config: str, result_file: Path) -> None:
    """Blocking: the target, with its device config, and an empty result file."""
    try:
        os.mkdir(target, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:  # the HBA's first target
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A stale "success" from an earlier attach must not be taken for this one's.
    write_file_no_follow(result_file, b"")
    # One store per write(2), as configfs takes them: two settings, one open.
    _write_attribute(
        target / "control", f"dev_config={config}", f"max_data_area_mb={MAX_DATA_AREA_MB}"
    )


def _made_group(path: Path) -> bool:
    """Blocking: mkdir of a configfs group; false if it existed."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return False
    return True


def _make_groups(base: Path, steps: list[str]) -> None:
    """Blocking: each of ``base/steps[0]``, ``base/steps[0]/steps[1]``... made unless it
    exists, one mkdir(2) each (every call is a round trip to configfs)."""
    path = base
    for step in steps:
        path /= step
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)


def _write_attribute(path: Path, *values: str) -> None:
    """Each value in one write() of its own, as configfs attributes take them."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for value in values:
            data = value.encode()
            if os.write(descriptor, data) != len(data):
                raise OSError(errno.EIO, f"short write to {path}")
    finally:
        os.close(descriptor)


def _read_attribute(path: Path) -> str:
    """Blocking: a configfs attribute, in one read (an attribute holds at most a page)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(descriptor, 4096).decode(errors="replace")
    finally:
        os.close(descriptor)


def info_config(info: str) -> str | None:
    """The ``dev_config`` a target's ``info`` attribute shows, None if it has none."""
    found = _INFO_CONFIG.search(info)
    return found.group(1) if found and found.group(1) != "NULL" else None


def read_result(result_file: Path) -> str:
    """Blocking: overlaybd's result file, stripped; "" if it is missing."""
    try:
        descriptor = os.open(result_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    try:
        data = b"".join(iter(lambda: os.read(descriptor, 65536), b""))
    finally:
        os.close(descriptor)
    return data.decode(errors="replace").strip()


def _overlaybd_reason(result: str) -> str:
    """The reason in overlaybd's result file (``failed:<reason>``), if it has one."""
    return result.removeprefix("failed:").strip() if result.startswith("failed") else ""


def _read_text(path: Path) -> str | None:
    try:
        return _read_attribute(path)
    except FileNotFoundError:
        return None


def _list_dir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
