"""DESIGN-v1 §10: Usage, over gRPC on the simulator, against a walk made by the test itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images, WritableRootfs
from support.simulator import MISSING
from support.snapshots import expect_status

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def du(top: Path, skip: str = "") -> tuple[int, int]:
    """(bytes of allocated blocks, inodes) under ``top``, itself included; entries named ``skip``
    below it are left out; a hard-linked inode counts once."""
    seen: dict[tuple[int, int], int] = {}
    for directory, subdirs, files in os.walk(top):
        subdirs[:] = [name for name in subdirs if name != skip]
        paths = [directory] if directory == str(top) else []
        paths += [os.path.join(directory, name) for name in (*subdirs, *files) if name != skip]
        for path in paths:
            st = os.lstat(path)
            seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values()), len(seen)


def block_layer_du(obd: Obd, snapshot_id: int) -> tuple[int, int]:
    """§10: ``fs/`` and ``block/`` (without mountpoints), each walk on its own, summed."""
    fs_size, fs_inodes = du(obd.fs(snapshot_id))
    block_size, block_inodes = du(obd.block(snapshot_id), skip="mountpoint")
    return fs_size + block_size, fs_inodes + block_inodes


async def usage_of(obd: Obd, key: str) -> tuple[int, int]:
    reply = await obd.usage(key)
    return reply.size, reply.inodes


async def test_s10_usage_of_an_active_plain_snapshot_walks_fs_only(obd: Obd) -> None:
    """DESIGN-v1 §10: an active normal snapshot is its fs/ now; block/ is not counted."""
    own = obd.own_id(await obd.prepare("active"))
    (obd.fs(own) / "dir").mkdir()
    (obd.fs(own) / "dir" / "a").write_bytes(b"a" * 30000)
    (obd.fs(own) / "b").write_bytes(b"b" * 5000)
    size, inodes = await usage_of(obd, "active")
    assert (size, inodes) == du(obd.fs(own))
    assert inodes == 4
    assert size >= 35000


async def test_s10_usage_of_an_active_writable_layer_adds_block_without_mountpoint(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §10: an active block snapshot adds block/, the mounted device left out."""
    rootfs = await writable_rootfs(files={"big": "x" * 200000})
    obd, own = rootfs.obd, rootfs.id
    usage = await usage_of(obd, rootfs.key)
    assert usage == block_layer_du(obd, own)
    # The device's own files (under the mountpoint) are not walked.
    with_device = du(obd.fs(own))[1] + du(obd.block(own))[1]
    assert (obd.mountpoint(own) / "big").exists()
    assert usage[1] < with_device
    assert usage != du(obd.fs(own))


async def test_s10_usage_of_a_committed_remote_layer_is_measured_live(
    obd: Obd, images: Images
) -> None:
    """DESIGN-v1 §10: a committed remote block layer is measured at each call, not stored."""
    top, top_id = await obd.unpack_top(images.single)
    assert await usage_of(obd, top) == block_layer_du(obd, top_id)
    before = await usage_of(obd, top)
    # A child attaches the device: the mark appears in block/, the mount is not walked.
    await obd.prepare("container", top)
    obd.assert_attached(top_id, mounted="ro")
    after = await usage_of(obd, top)
    assert after == block_layer_du(obd, top_id)
    assert after[1] == before[1] + 1  # backstore_mark
    # Each walk counts its inodes on its own: one inode in both counts twice.
    os.link(obd.config_path(top_id), obd.fs(top_id) / "linked")
    linked = await usage_of(obd, top)
    assert linked[1] == after[1] + 1
    assert linked == block_layer_du(obd, top_id)
    os.unlink(obd.fs(top_id) / "linked")


async def test_s10_usage_of_a_committed_local_layer_is_measured_live(
    writable_rootfs: WritableRootfs,
) -> None:
    """DESIGN-v1 §10: a committed local block layer (overlaybd.commit) is measured at each call."""
    rootfs = await writable_rootfs(files={"payload": "p" * 100000})
    obd, own = rootfs.obd, rootfs.id
    await obd.commit("layer", rootfs.key)
    assert await usage_of(obd, "layer") == block_layer_du(obd, own)
    (obd.block(own) / "extra").write_bytes(b"e" * 9000)
    assert await usage_of(obd, "layer") == block_layer_du(obd, own)
    (obd.block(own) / "extra").unlink()


async def test_s10_usage_of_a_committed_normal_layer_and_a_view_is_stored(obd: Obd) -> None:
    """DESIGN-v1 §10: a committed normal layer keeps the usage of its commit; a view 0/0."""
    own = obd.own_id(await obd.prepare("active"))
    (obd.fs(own) / "file").write_bytes(b"f" * 20000)
    at_commit = du(obd.fs(own))
    await obd.commit("layer", "active")
    assert await usage_of(obd, "layer") == at_commit
    (obd.fs(own) / "later").write_bytes(b"l" * 20000)
    assert await usage_of(obd, "layer") == at_commit
    await obd.view("view", "layer")
    assert await usage_of(obd, "view") == (0, 0)


async def test_s10_usage_fails_when_the_storage_type_cannot_be_identified(obd: Obd) -> None:
    """DESIGN-v1 §10: an identification error fails Usage."""
    own = obd.own_id(await obd.prepare("active"))
    unreadable = obd.block(own) / "writable_data"
    unreadable.mkdir()
    error = await expect_status(obd.usage("active"), Status.UNKNOWN)
    assert "writable_data" in (error.message or "")
    unreadable.rmdir()
    assert await usage_of(obd, "active") == du(obd.fs(own))
