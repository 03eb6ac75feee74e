"""The device protocol of DESIGN §8, with plain file operations (what obdsnap does)."""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from support.processes import run

HBA = "user_999999999"
CMD_TIME_OUT = "2147483"


def wwn(device_id: int) -> str:
    return f"naa.199{device_id:013d}"


def write_attr(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_attr(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Attached:
    device_id: int
    address: str  # host:channel:target
    name: str  # block device name (loopN)

    @property
    def device(self) -> str:
        return f"/dev/{self.name}"


class Protocol:
    def __init__(self, configfs: Path, sysfs: Path) -> None:
        self.configfs = configfs
        self.sysfs = sysfs

    def target_dir(self, device_id: int) -> Path:
        return self.configfs / "target/core" / HBA / f"dev_{device_id}"

    def loopback_dir(self, device_id: int) -> Path:
        return self.configfs / "target/loopback" / wwn(device_id)

    def tpgt_dir(self, device_id: int) -> Path:
        return self.loopback_dir(device_id) / "tpgt_1"

    def lun_dir(self, device_id: int) -> Path:
        return self.tpgt_dir(device_id) / "lun/lun_0"

    def create(self, device_id: int, config: Path) -> None:
        target = self.target_dir(device_id)
        os.makedirs(target, exist_ok=True)
        write_attr(target / "control", f"dev_config=overlaybd/{config}")
        write_attr(target / "control", "max_data_area_mb=4")

    def enable(self, device_id: int, *, retries: int = 100) -> int:
        """Write 1 to enable, retrying EAGAIN every 50 ms; returns how many EAGAINs it saw."""
        for attempt in range(retries + 1):
            try:
                write_attr(self.target_dir(device_id) / "enable", "1")
                return attempt
            except OSError as exc:
                if exc.errno != errno.EAGAIN or attempt == retries:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def export(self, device_id: int) -> str:
        """Loopback target, nexus, LUN link; returns the address (host:channel:target)."""
        write_attr(self.target_dir(device_id) / "attrib/cmd_time_out", CMD_TIME_OUT)
        os.makedirs(self.lun_dir(device_id), exist_ok=True)
        write_attr(self.tpgt_dir(device_id) / "nexus", wwn(device_id))
        os.symlink(self.target_dir(device_id), self.lun_dir(device_id) / f"dev_{device_id}")
        return read_attr(self.tpgt_dir(device_id) / "address").strip()

    def find_disk(self, address: str) -> str | None:
        block = self.sysfs / "class/scsi_device" / f"{address}:0" / "device/block"
        try:
            names = sorted(os.listdir(block))
        except FileNotFoundError:
            return None
        return names[0] if names else None

    def wait_disk(self, address: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while (name := self.find_disk(address)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no disk at {address}:0 after {timeout}s")
            time.sleep(0.01)
        return name

    def attach(self, device_id: int, config: Path, *, timeout: float = 5.0) -> Attached:
        self.create(device_id, config)
        self.enable(device_id)
        address = self.export(device_id)
        return Attached(device_id, address, self.wait_disk(address, timeout))

    def detach(self, device_id: int) -> None:
        link = self.lun_dir(device_id) / f"dev_{device_id}"
        if os.path.islink(link):
            os.unlink(link)
        for path in (
            self.lun_dir(device_id),
            self.tpgt_dir(device_id),
            self.loopback_dir(device_id),
            self.target_dir(device_id),
        ):
            if path.exists():
                os.rmdir(path)


def write_config(
    path: Path,
    *,
    lowers: list[dict[str, object]] | None = None,
    upper: dict[str, str] | None = None,
    result_file: Path | None = None,
    repo_blob_url: str = "",
    **extra: object,
) -> Path:
    """A config.v1.json as obdsnap writes it; ``extra`` adds accelerationLayer etc."""
    document: dict[str, object] = {
        "repoBlobUrl": repo_blob_url,
        "lowers": lowers or [],
        "upper": upper or {},
        "resultFile": str(result_file or path.parent / "init-debug.log"),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


@dataclass(frozen=True)
class Snapshot:
    """A snapshot directory laid out as DESIGN §2 (only what the device needs)."""

    root: Path

    @property
    def fs(self) -> Path:
        return self.root / "fs"

    @property
    def block(self) -> Path:
        return self.root / "block"

    @property
    def config(self) -> Path:
        return self.block / "config.v1.json"

    @property
    def result(self) -> Path:
        return self.block / "init-debug.log"

    @property
    def data(self) -> Path:
        return self.block / "writable_data"

    @property
    def index(self) -> Path:
        return self.block / "writable_index"

    @property
    def mountpoint(self) -> Path:
        return self.block / "mountpoint"

    @property
    def commit(self) -> Path:
        return self.fs / "overlaybd.commit"

    def make(self) -> Snapshot:
        for path in (self.fs, self.block, self.mountpoint):
            path.mkdir(parents=True, exist_ok=True)
        self.result.write_text("")
        return self

    def upper(self) -> dict[str, str]:
        return {"index": str(self.index), "data": str(self.data)}


def must(*command: str | Path) -> str:
    return run(*command, timeout=120).stdout


MKFS_EXT4 = ("mkfs", "-t", "ext4", "-O", "^has_journal,sparse_super,flex_bg", "-G", "1",
             "-E", "discard", "-F", "-q")  # fmt: skip
