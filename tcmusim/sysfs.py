"""The part of sysfs that SCSI disk discovery reads, kept in a plain directory.

Layout (relative symlinks, as in the real sysfs)::

    devices/tcm_loop_0/tcm_loop_adapter_H/hostH/targetH:0:T/H:0:T:L/
        timeout state vendor model rev type
        block/<name>/{size,ro,dev,device -> ../../../H:0:T:L}
        scsi_device/H:0:T:L/device -> ../../../H:0:T:L
    class/scsi_host/hostH -> ../../devices/tcm_loop_0/tcm_loop_adapter_H/hostH
    class/scsi_device/H:0:T:L -> ../../devices/.../H:0:T:L/scsi_device/H:0:T:L
    block/<name> -> ../devices/.../H:0:T:L/block/<name>

A disk is published bottom-up and the ``class/scsi_device`` link last (by an
atomic rename), so whoever finds the link finds the whole disk. Each SCSI host
and disk has directories of its own, so they are made without a lock; only the
``block/<name>`` links, which a loop device's name reused by a newer disk shares,
are published and removed under one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tcmusim.sysfs")


@dataclass(frozen=True)
class ScsiAddress:
    host: int
    channel: int
    target: int
    lun: int

    def __str__(self) -> str:
        return f"{self.host}:{self.channel}:{self.target}:{self.lun}"


@dataclass(frozen=True)
class Disk:
    address: ScsiAddress
    name: str  # the block device's name: /dev/<name>
    size: int  # bytes
    read_only: bool


class Sysfs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def prepare(self) -> None:
        for sub in ("class/scsi_device", "class/scsi_host", "block", "devices/tcm_loop_0"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _host_dir(self, host: int) -> Path:
        return self.root / f"devices/tcm_loop_0/tcm_loop_adapter_{host}/host{host}"

    def _device_dir(self, address: ScsiAddress) -> Path:
        target = f"target{address.host}:{address.channel}:{address.target}"
        return self._host_dir(address.host) / target / str(address)

    def add_host(self, host: int) -> None:
        host_dir = self._host_dir(host)
        host_dir.mkdir(parents=True, exist_ok=True)
        _write(host_dir / "proc_name", "tcm_loopback\n")
        _publish_link(self.root / "class/scsi_host" / f"host{host}", host_dir)

    def remove_host(self, host: int) -> None:
        _remove_link(self.root / "class/scsi_host" / f"host{host}")
        host_dir = self._host_dir(host)
        _remove_made(host_dir.parent, [host_dir / "proc_name"], [host_dir, host_dir.parent])

    def add_disk(self, disk: Disk) -> None:
        address = str(disk.address)
        device_dir = self._device_dir(disk.address)
        block_dir = device_dir / "block" / disk.name
        block_dir.mkdir(parents=True, exist_ok=True)
        for name, value in _DEVICE_ATTRIBUTES:
            _write(device_dir / name, value + "\n")
        _write(block_dir / "size", f"{disk.size // 512}\n")
        _write(block_dir / "ro", f"{int(disk.read_only)}\n")
        with contextlib.suppress(OSError):
            rdev = os.stat(f"/dev/{disk.name}").st_rdev
            _write(block_dir / "dev", f"{os.major(rdev)}:{os.minor(rdev)}\n")
        _publish_link(block_dir / "device", device_dir)
        scsi_device = device_dir / "scsi_device" / address
        scsi_device.mkdir(parents=True, exist_ok=True)
        _publish_link(scsi_device / "device", device_dir)
        with self._lock:
            _publish_link(self.root / "block" / disk.name, block_dir)
        _publish_link(self.root / "class/scsi_device" / address, scsi_device)
        log.info("disk %s appeared as %s (%d bytes)", address, disk.name, disk.size)

    def remove_disk(self, disk: Disk) -> None:
        _remove_link(self.root / "class/scsi_device" / str(disk.address))
        block_link = self.root / "block" / disk.name
        device_dir = self._device_dir(disk.address)
        with self._lock:
            # Only our own link: the same loop name may belong to a newer disk by now.
            if os.path.realpath(block_link) == str((device_dir / "block" / disk.name).resolve()):
                _remove_link(block_link)
        block_dir = device_dir / "block" / disk.name
        scsi_device = device_dir / "scsi_device" / str(disk.address)
        files = [device_dir / name for name, _ in _DEVICE_ATTRIBUTES]
        files += [block_dir / name for name in ("size", "ro", "dev", "device")]
        files.append(scsi_device / "device")
        directories = [block_dir, block_dir.parent, scsi_device, scsi_device.parent, device_dir]
        _remove_made(device_dir, files, directories)
        with contextlib.suppress(OSError):
            device_dir.parent.rmdir()
        log.info("disk %s (%s) removed", disk.address, disk.name)

    def clear(self) -> None:
        """Remove everything the simulator published; keep the empty skeleton."""
        with self._lock:
            for sub in ("class/scsi_device", "class/scsi_host", "block"):
                directory = self.root / sub
                if directory.is_dir():
                    for entry in directory.iterdir():
                        _remove_link(entry)
            shutil.rmtree(self.root / "devices/tcm_loop_0", ignore_errors=True)
            (self.root / "devices/tcm_loop_0").mkdir(parents=True, exist_ok=True)


_DEVICE_ATTRIBUTES = (
    ("timeout", "30"),
    ("state", "running"),
    ("vendor", "LIO-ORG "),
    ("model", "TCMU device     "),
    ("rev", "0002"),
    ("type", "0"),
)


def _remove_made(top: Path, files: list[Path], directories: list[Path]) -> None:
    """What add_disk/add_host made under ``top``, by name (a walk costs far more); anything
    else found there goes with the whole tree."""
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for directory in directories:
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError:
            shutil.rmtree(top, ignore_errors=True)
            return


def _write(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)


def _publish_link(link: Path, target: Path) -> None:
    relative = os.path.relpath(target, link.parent)
    temporary = link.with_name(f".{link.name}.new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(relative, temporary)
    os.replace(temporary, link)


def _remove_link(link: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
