"""Fault injection and latencies, flipped at run time through the control file."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tcmusim import layerfmt
from tcmusim.testing import RunningSimulator, only

from .protocol import Protocol, Snapshot, write_config

pytestmark = pytest.mark.root


def writable(root: Path, size_gb: int = 1) -> Snapshot:
    """A snapshot with a fresh writable layer and its config (no parent)."""
    snap = Snapshot(root).make()
    layerfmt.create_writable(snap.data, snap.index, size_gb << 30, sparse=True)
    write_config(snap.config, upper=snap.upper(), result_file=snap.result)
    return snap


def test_fail_open_for_one_device(sim: RunningSimulator, proto: Protocol, tmp_path: Path) -> None:
    sim.control.set(fail_open=only("registry said no", "dev_130"))
    failing, working = writable(tmp_path / "a"), writable(tmp_path / "b")
    proto.create(130, failing.config)
    try:
        with pytest.raises(OSError) as caught:
            proto.enable(130)
        assert caught.value.errno == errno.EIO
        assert failing.result.read_text() == "failed:registry said no"
    finally:
        proto.detach(130)
    proto.attach(131, working.config)
    assert working.result.read_text() == "success"
    proto.detach(131)


def test_eagain_then_success(sim: RunningSimulator, proto: Protocol, tmp_path: Path) -> None:
    sim.control.set(eagain=3)
    snap = writable(tmp_path / "a")
    proto.create(132, snap.config)
    try:
        assert proto.enable(132) == 3
        assert snap.result.read_text() == "success"
    finally:
        proto.detach(132)


def test_eagain_exhausts_a_short_retry(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path
) -> None:
    sim.control.set(eagain=only(5, 133))
    snap = writable(tmp_path / "a")
    proto.create(133, snap.config)
    try:
        with pytest.raises(OSError) as caught:
            proto.enable(133, retries=2)
        assert caught.value.errno == errno.EAGAIN
        assert proto.enable(133) == 2  # five in all, then it opens
    finally:
        proto.detach(133)


def test_enable_errno_fails_the_enable_without_opening(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path
) -> None:
    sim.control.set(enable_errno=only(errno.ENOMEM, 135))
    snap = writable(tmp_path / "a")
    proto.create(135, snap.config)
    try:
        with pytest.raises(OSError) as caught:
            proto.enable(135)
        assert caught.value.errno == errno.ENOMEM
        assert snap.result.read_text() == ""  # overlaybd never saw it
        sim.control.clear()
        proto.enable(135)
        assert snap.result.read_text() == "success"
    finally:
        proto.detach(135)


def test_never_appear(sim: RunningSimulator, proto: Protocol, tmp_path: Path) -> None:
    sim.control.set(never_appear=only(True, 134))
    snap = writable(tmp_path / "a")
    proto.create(134, snap.config)
    proto.enable(134)
    address = proto.export(134)
    try:
        with pytest.raises(TimeoutError):
            proto.wait_disk(address, timeout=0.5)
    finally:
        proto.detach(134)
    assert sim.loop_devices() == []


def test_open_latency_and_result_before_enable_returns(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path
) -> None:
    sim.control.set(open_latency=0.4)
    snap = writable(tmp_path / "a")
    proto.create(135, snap.config)
    started = time.monotonic()
    try:
        proto.enable(135)
        elapsed = time.monotonic() - started
        assert snap.result.read_text() == "success"  # already there when enable returns
    finally:
        proto.detach(135)
    assert 0.4 <= elapsed < 2.0


def test_rmdir_waits_for_a_blocked_enable(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path
) -> None:
    # As configfs's frag_sem does: removal waits for the store in progress.
    sim.control.set(open_latency=only(0.5, 139))
    snap = writable(tmp_path / "a")
    proto.create(139, snap.config)
    with ThreadPoolExecutor(1) as pool:
        enabling = pool.submit(proto.enable, 139)
        time.sleep(0.15)
        assert not enabling.done()
        started = time.monotonic()
        os.rmdir(proto.target_dir(139))
        assert time.monotonic() - started >= 0.25  # it waited for the open
        assert enabling.result(timeout=5) == 0
    assert not proto.target_dir(139).exists()
    assert sim.loop_devices() == []


def test_appear_delay(sim: RunningSimulator, proto: Protocol, tmp_path: Path) -> None:
    sim.control.set(appear_delay=0.3)
    snap = writable(tmp_path / "a")
    proto.create(136, snap.config)
    proto.enable(136)
    started = time.monotonic()
    address = proto.export(136)
    try:
        assert proto.find_disk(address) is None
        proto.wait_disk(address, timeout=3)
        assert time.monotonic() - started >= 0.29
    finally:
        proto.detach(136)


def _read_blocks(device: str, count: int) -> float:
    started = time.monotonic()
    subprocess.run(
        ["dd", f"if={device}", "of=/dev/null", "bs=4096", f"count={count}", "iflag=direct"],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def test_slow_io(sim: RunningSimulator, proto: Protocol, tmp_path: Path) -> None:
    sim.control.set(slow_io_ms=only(25, 137))
    slow = proto.attach(137, writable(tmp_path / "slow").config)
    fast = proto.attach(138, writable(tmp_path / "fast").config)
    try:
        assert _read_blocks(slow.device, 8) >= 8 * 0.025
        assert _read_blocks(fast.device, 8) < 8 * 0.025
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={slow.device}", "bs=4096", "count=4", "oflag=direct"],
            check=True,
            capture_output=True,
        )
        sim.control.set(slow_io_ms=only(0, 137))  # live: the next I/O is fast
        assert _read_blocks(slow.device, 8) < 8 * 0.025
    finally:
        proto.detach(137)
        proto.detach(138)
    assert sim.loop_devices() == []


def test_ten_devices_attach_concurrently(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path
) -> None:
    latency = 1.0
    sim.control.set(open_latency=latency)
    snaps = [writable(tmp_path / str(i)) for i in range(10)]
    ids = list(range(140, 150))
    started = time.monotonic()
    with ThreadPoolExecutor(len(ids)) as pool:
        attached = list(pool.map(lambda i: proto.attach(ids[i], snaps[i].config), range(10)))
    elapsed = time.monotonic() - started
    try:
        assert len({disk.name for disk in attached}) == 10
        assert len({disk.address for disk in attached}) == 10
        assert latency <= elapsed < 4 * latency, f"10 attaches took {elapsed:.2f}s"
    finally:
        with ThreadPoolExecutor(len(ids)) as pool:
            list(pool.map(proto.detach, ids))
    assert sim.loop_devices() == []
    assert list((sim.sysfs / "class/scsi_device").iterdir()) == []
