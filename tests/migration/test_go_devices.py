"""Devices the Go snapshotter attached are adopted at the import, not torn down.

obdsnap on the TCMU simulator attaches devices as the Go snapshotter does (same
configfs objects, ``dev_config``, mark and mount); ``migrate --to go`` then
leaves the root exactly as the Go snapshotter would, devices attached, with a
file open on a container's rootfs. obdsnap started on that Go root must keep
every device and mount and answer Mounts without attaching anything again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.block import Obd
from support.block_fixtures import Images, StartObd, write_synced
from support.mounts import mount_at
from support.simulator import MISSING

from obdsnap.labels import ACTIVE_PATH, WRITABLE
from obdsnap.layout import Layout

from .gohelpers import migrate_to_go, stored_rows

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
]


def device_state(obd: Obd, snapshot_id: int) -> tuple[object, ...]:
    """Everything that tells a device and its mount apart."""
    entry = mount_at(obd.mountpoint(snapshot_id))
    return (
        obd.device_of(snapshot_id),
        obd.mark(snapshot_id),
        obd.configfs_entries(snapshot_id),
        (obd.target_dir(snapshot_id) / "control").stat().st_ino,
        None if entry is None else (entry.source, entry.options),
    )


async def test_go_devices_are_adopted(start_obd: StartObd, images: Images) -> None:
    obd = await start_obd(rwMode="overlayfs")
    layer = (await obd.unpack_remote(images.single))[-1]
    layer_id = obd.latest_id()
    writable = await obd.prepare("ctr-dir", layer, {WRITABLE: "dir"})
    dir_id = obd.own_id(writable)
    overlay = await obd.prepare("ctr-overlay", layer)
    dev = await obd.prepare("ctr-dev", layer, {WRITABLE: "dev"})
    dev_id = obd.own_id(dev)
    rootfs = obd.root.parent / "rootfs"
    obd.mount_for_real(writable[0], rootfs)
    running = (rootfs / "running.log").open("w")  # a container's open file
    try:
        running.write("before\n")
        running.flush()
        before = {i: device_state(obd, i) for i in (layer_id, dir_id, dev_id)}
        assert await obd.stop() == 0

        done = migrate_to_go(obd.root)
        assert done.returncode == 0, done.stderr
        assert not (obd.root / "metadata.db").read_bytes().startswith(b"SQLite")
        log_offset = obd.server.log_path.stat().st_size

        await obd.start()
        log = obd.server.log_path.read_text()[log_offset:]
        assert "imported the Go snapshotter's metadata" in log
        assert " attached (" not in log and "detached" not in log, log
        assert "0 orphan devices released" in log
        assert {i: device_state(obd, i) for i in (layer_id, dir_id, dev_id)} == before
        assert await obd.mounts("ctr-dir") == writable
        assert await obd.mounts("ctr-overlay") == overlay
        assert await obd.mounts("ctr-dev") == dev
        assert {i: device_state(obd, i) for i in (layer_id, dir_id, dev_id)} == before
        running.write("after\n")
        running.flush()
        assert (obd.mountpoint(dir_id) / "running.log").read_text() == "before\nafter\n"
        await asyncio.sleep(0)
        assert " attached (" not in obd.server.log_path.read_text()[log_offset:]
    finally:
        running.close()
        obd.umount_for_real(rootfs)


async def test_go_layer_in_active_path_is_adopted_in_place(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §6 step 5: a Go dir snapshot whose layer is in overlay.active.path stays dir
    mode; Mounts attaches the device over those files; Remove leaves them to their owner."""
    obd = await start_obd(rwMode="overlayfs")
    layer = (await obd.unpack_remote(images.single))[-1]
    place = tmp_path / "active"
    labels = {WRITABLE: "dir", ACTIVE_PATH: str(place)}
    own = obd.own_id(await obd.prepare("ctr-dir", layer, labels))
    write_synced(obd.mountpoint(own), {"state": "made before the take-over\n"})
    assert await obd.stop() == 0
    assert migrate_to_go(obd.root).returncode == 0
    # The root as Go v1.4.4 leaves it: its config names the files, and no record of their origin.
    Layout(obd.root).block(own).writable_location.unlink()
    obd.detach_like_reboot(own)
    files = {name: (place / name).stat().st_ino for name in ("writable_data", "writable_index")}

    await obd.start()
    assert stored_rows(obd.root / "metadata.db")["ctr-dir"]["rw_mode"] == "dir"
    mounts = await obd.mounts("ctr-dir")
    obd.assert_attached(own, mounted="rw")
    assert mounts[0].source == str(obd.mountpoint(own))
    assert (obd.mountpoint(own) / "state").read_text() == "made before the take-over\n"
    assert obd.config(own)["upper"]["data"] == str(place / "writable_data")
    await obd.remove("ctr-dir")
    await obd.wait_gone(own)
    assert {name: (place / name).stat().st_ino for name in files} == files
