"""The TCMU simulator as the block, e2e, conformance and chaos suites use it.

``simulator`` is a module-scoped fixture (registered for every suite by
tests/conftest.py): one simulator per test module, which must stop cleanly and
leave no loop device. Its work directory is a short ``/tmp/obd-*``: the kernel
(and the simulator) cut a device's ``dev_config`` at 255 bytes.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from obdsnap.config import NO_TENANT
from obdsnap.device.tcmu_names import TcmuNames
from support.mounts import deepest_first, umount
from support.server_process import short_tmpdir
from tcmusim.testing import HBA, RunningSimulator, missing_requirements, running_simulator

__all__ = ["HBA", "MISSING", "RunningSimulator"]

MISSING = missing_requirements()


def hba(tenant: int = NO_TENANT) -> str:
    """The HBA directory (under ``target/core``) of a tenant's devices."""
    return TcmuNames(tenant).hba


def wwn(snapshot_id: int, tenant: int = NO_TENANT) -> str:
    """The loopback WWN of a snapshot's device, for ``tenant``."""
    return TcmuNames(tenant).wwn(snapshot_id)


def settings_on(sim: RunningSimulator, **settings: object) -> dict[str, object]:
    """obdsnap's boot config for the simulator's configfs, sysfs and tools, plus ``settings``."""
    return {
        "configfsRoot": str(sim.configfs),
        "sysfsRoot": str(sim.sysfs),
        "overlaybd_util_bin_dir": str(sim.tools_dir),
        **settings,
    }


@contextlib.contextmanager
def simulator_for_tests() -> Iterator[RunningSimulator]:
    """A simulator on a fresh short directory; skips the test where it cannot run.

    On a normal exit it must stop with status 0 and leave no loop device bound.
    """
    if MISSING is not None:
        pytest.skip(MISSING)
    work = short_tmpdir()
    try:
        with running_simulator(work / "sim") as sim:
            yield sim
            sim.control.clear()
            status = sim.stop()
            assert status == 0, f"simulator exited with {status}:\n{sim.log()[-4000:]}"
            assert sim.loop_devices() == [], "loop devices left after the simulator stopped"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def simulator() -> Iterator[RunningSimulator]:
    """One simulator per test module."""
    with simulator_for_tests() as sim:
        yield sim


# ---------------------------------------------------------------------- devices in configfs


def configfs_devices(sim: RunningSimulator) -> list[Path]:
    """TCMU targets (of every HBA) and loopback WWNs still set up in the simulator's configfs."""
    found = [entry for entry in _targets(sim) if entry.name.startswith("dev_")]
    loopback = sim.configfs / "target/loopback"
    return found + [entry for entry in _subdirs(loopback) if entry.name.startswith("naa.")]


def remove_device(sim: RunningSimulator, snapshot_id: int, tenant: int = NO_TENANT) -> None:
    """Take one snapshot's device down in configfs as the kernel's users do (LUN link first)."""
    _remove_loopback(sim.configfs / "target/loopback" / wwn(snapshot_id, tenant))
    with contextlib.suppress(FileNotFoundError):
        (sim.configfs / "target/core" / hba(tenant) / f"dev_{snapshot_id}").rmdir()


def force_clean(sim: RunningSimulator | None, roots: Iterable[Path]) -> None:
    """After a test: unmount everything under ``roots``, then take every device down."""
    for root in roots:
        for point in deepest_first(root):
            with contextlib.suppress(AssertionError):
                umount(point, lazy=True)
    if sim is None:
        return
    for entry in _subdirs(sim.configfs / "target/loopback"):
        if entry.name.startswith("naa."):
            _remove_loopback(entry)
    for entry in _targets(sim):
        with contextlib.suppress(OSError):
            entry.rmdir()


def _targets(sim: RunningSimulator) -> list[Path]:
    """Every TCMU target, in every user HBA."""
    core = sim.configfs / "target/core"
    hbas = [entry for entry in _subdirs(core) if entry.name.startswith("user_")]
    return [target for hba_dir in hbas for target in _subdirs(hba_dir)]


def _remove_loopback(wwn_dir: Path) -> None:
    lun = wwn_dir / "tpgt_1/lun/lun_0"
    for link in lun.iterdir() if lun.is_dir() else []:
        if link.is_symlink():
            link.unlink()
    for directory in (lun, wwn_dir / "tpgt_1", wwn_dir):
        with contextlib.suppress(FileNotFoundError):
            directory.rmdir()


def _subdirs(directory: Path) -> list[Path]:
    return [entry for entry in directory.iterdir() if entry.is_dir()] if directory.is_dir() else []
