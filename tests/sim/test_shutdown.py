"""Simulator shutdown detaches everything, whatever state the devices are in."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tcmusim import layerfmt
from tcmusim.testing import missing_requirements, only, running_simulator

from .protocol import Protocol, Snapshot, write_config

pytestmark = pytest.mark.root


def _writable(root: Path) -> Snapshot:
    snap = Snapshot(root).make()
    layerfmt.create_writable(snap.data, snap.index, 1 << 30, sparse=True)
    write_config(snap.config, upper=snap.upper(), result_file=snap.result)
    return snap


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_cleans_everything(tmp_path: Path, signum: int) -> None:
    if (reason := missing_requirements()) is not None:
        pytest.skip(reason)
    with running_simulator(tmp_path / "sim") as sim:
        proto = Protocol(sim.configfs, sim.sysfs)
        # Exported and visible; enabled only; exported but not yet visible.
        visible = proto.attach(150, _writable(tmp_path / "a").config)
        proto.create(151, _writable(tmp_path / "b").config)
        proto.enable(151)
        sim.control.set(appear_delay=only(30, 152), open_latency=only(30, 153))
        proto.create(152, _writable(tmp_path / "c").config)
        proto.enable(152)
        pending = proto.export(152)
        # And one whose enable is still blocked in the image open.
        proto.create(153, _writable(tmp_path / "d").config)
        outcome: list[int | None] = []

        def enable() -> None:
            try:
                proto.enable(153)
                outcome.append(None)
            except OSError as exc:
                outcome.append(exc.errno)

        blocked = threading.Thread(target=enable)
        blocked.start()
        time.sleep(0.2)
        assert len(sim.loop_devices()) == 3
        assert proto.find_disk(visible.address) == visible.name
        assert proto.find_disk(pending) is None

        started = time.monotonic()
        sim.process.send_signal(signum)
        assert sim.process.wait(20) == 0, sim.log()
        assert time.monotonic() - started < 10
        blocked.join(10)
        assert outcome and outcome[0] in (errno.EIO, errno.ENOTCONN, errno.ENODEV), outcome

        assert sim.loop_devices() == []
        assert not os.path.ismount(sim.configfs)
        assert os.listdir(sim.configfs) == []
        for sub in ("class/scsi_device", "class/scsi_host", "block"):
            assert os.listdir(sim.sysfs / sub) == [], sub
        assert "stopped" in sim.log()
