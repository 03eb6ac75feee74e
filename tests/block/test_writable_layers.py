"""DESIGN §6/§7: writable block devices (rwMode dir and dev) and committing them.

A ``dir``/``dev`` snapshot gets a writable layer (``overlaybd-create``) and a
device of its own: mounted read-write and returned as an rbind of
``block/mountpoint`` (``dir``), or handed out unmounted (``dev``). Commit
detaches it and packs the layer with ``overlaybd-commit -z`` into
``fs/overlaybd.commit``, which makes the snapshot a local block layer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd, read_header
from support.block_fixtures import Images, StartObd, WritableRootfs
from support.mounts import mount_at, mount_options
from support.processes import run
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap.labels import BLOB_FS_TYPE, LOCAL_COMMIT_PATH, WRITABLE, ZFILE_CONFIG
from tcmusim import layerfmt

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

GIB = 1 << 30


async def committed_dir_layer(
    obd: Obd, name: str, parent: str = "", files: dict[str, str] | None = None
) -> int:
    """Prepare ``name``-active in dir mode, write ``files`` on its device, commit it as ``name``."""
    mounts = await obd.prepare(f"{name}-active", parent, {WRITABLE: "dir"})
    own = obd.own_id(mounts)
    for relative, content in (files or {}).items():
        (Path(mounts[0].source) / relative).write_text(content)
    await obd.commit(name, f"{name}-active")
    return own


async def test_dir_mode_device_has_a_writable_layer_and_is_mounted_rw(
    writable_rootfs: WritableRootfs,
) -> None:
    rootfs = await writable_rootfs(files={"hello": "hi\n"})
    obd, own = rootfs.obd, rootfs.id
    block = obd.block(own)
    assert obd.config(own) == {
        "repoBlobUrl": "",
        "lowers": [],
        "upper": {
            "index": str(block / "writable_index"),
            "data": str(block / "writable_data"),
            "vsize": 64,  # DESIGN-v1 §6 step 5: no parent, no vsize label
        },
        "resultFile": str(block / "init-debug.log"),
    }
    data = read_header(block / "writable_data")
    assert (data.kind, data.virtual_size, data.sparse) == ("data", 64 * GIB, False)
    assert read_header(block / "writable_index").kind == "index"
    device = obd.assert_attached(own, mounted="rw")
    entry = mount_at(obd.mountpoint(own))
    assert entry is not None and entry.fs_type == "ext4"
    assert "discard" in entry.super_options.split(",")
    # ext4 made with the snapshotter's options: no journal.
    assert "has_journal" not in run("dumpe2fs", "-h", device).stdout
    # The rootfs is the device's filesystem.
    assert Path(rootfs.mounts[0].source) == obd.mountpoint(own)
    rootfs.assert_holds({"hello": "hi\n"})


async def test_sparse_writable_layer_type(writable_rootfs: WritableRootfs) -> None:
    rootfs = await writable_rootfs(files={}, writableLayerType="sparse")
    assert read_header(rootfs.obd.block(rootfs.id) / "writable_data").sparse is True


@pytest.mark.parametrize(
    ("zfile_config", "algorithm", "block_size"),
    [
        ('{"algorithm":"lz4","blockSize":64}', "lz4", 64 * 1024),
        ('{"algorithm":"zstd","blockSize":8}', "zstd", 8 * 1024),
        (None, "lz4", 4 * 1024),
    ],
    ids=["lz4-64k", "zstd-8k", "defaults"],
)
async def test_commit_packs_the_writable_layer_with_overlaybd_commit(
    start_obd: StartObd, zfile_config: str | None, algorithm: str, block_size: int
) -> None:
    obd = await start_obd(rwMode="dir")
    mounts = await obd.prepare("layer-active")
    own = obd.own_id(mounts)
    (Path(mounts[0].source) / "file.txt").write_text("committed\n")
    labels = {"team": "a"} | ({ZFILE_CONFIG: zfile_config} if zfile_config else {})
    await obd.commit("layer", "layer-active", labels)

    commit_file = obd.fs(own) / "overlaybd.commit"
    header = read_header(commit_file)
    assert header.magic is layerfmt.Magic.ZFILE  # -z
    assert (header.algorithm, header.block_size) == (algorithm, block_size)
    info = await obd.stat("layer")
    assert info.labels == {**labels, LOCAL_COMMIT_PATH: str(commit_file)}
    # The device is gone, and with it the writable layer.
    obd.assert_detached(own)
    assert obd.sim.loop_devices() == []
    assert not (obd.block(own) / "writable_data").exists()
    assert not (obd.block(own) / "writable_index").exists()
    # A local block layer now: lowers = (no parent) + its own fs/.
    assert obd.config(own) == {
        "repoBlobUrl": "",
        "lowers": [{"dir": str(obd.fs(own))}],
        "upper": {},
        "resultFile": str(obd.block(own) / "init-debug.log"),
    }
    # Usage is measured after the commit: the layer file is counted.
    usage = await obd.usage("layer")
    assert usage.size >= os.stat(commit_file).st_blocks * 512


async def test_zfile_config_from_the_prepare_labels(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dir")
    labels = {ZFILE_CONFIG: '{"algorithm":"zstd","blockSize":16}'}
    own = obd.own_id(await obd.prepare("layer-active", "", labels))
    await obd.commit("layer", "layer-active")
    header = read_header(obd.fs(own) / "overlaybd.commit")
    assert (header.algorithm, header.block_size) == ("zstd", 16 * 1024)


async def test_children_in_dir_mode_read_their_parents_and_keep_their_own_writes(
    start_obd: StartObd, tmp_path: Path
) -> None:
    obd = await start_obd(rwMode="dir")
    a = await committed_dir_layer(obd, "A", files={"a.txt": "from A\n", "shared": "A\n"})
    b = await committed_dir_layer(obd, "B", "A", files={"b.txt": "from B\n", "shared": "B\n"})
    assert obd.config(b)["lowers"] == [{"dir": str(obd.fs(a))}, {"dir": str(obd.fs(b))}]

    mounts = await obd.prepare("container", "B")
    own = obd.own_id(mounts)
    rootfs = Path(mounts[0].source)
    assert (rootfs / "a.txt").read_text() == "from A\n"
    assert (rootfs / "b.txt").read_text() == "from B\n"
    assert (rootfs / "shared").read_text() == "B\n"
    (rootfs / "c.txt").write_text("from the container\n")
    assert obd.config(own)["lowers"] == [{"dir": str(obd.fs(a))}, {"dir": str(obd.fs(b))}]
    assert obd.config(own)["upper"] == {
        "index": str(obd.block(own) / "writable_index"),
        "data": str(obd.block(own) / "writable_data"),
    }
    # The parents' devices are not needed: the child's device serves their data.
    obd.assert_detached(a)
    obd.assert_detached(b)

    # An overlayfs container on B sees the same files through B's read-only device.
    overlay = await obd.prepare("overlay-container", "B", {WRITABLE: "overlayfs"})
    assert mount_options(overlay[0])["lowerdir"] == str(obd.mountpoint(b))
    obd.assert_attached(b, mounted="ro")
    target = tmp_path / "rootfs"
    obd.mount_for_real(overlay[0], target)
    assert (target / "a.txt").read_text() == "from A\n"
    assert (target / "shared").read_text() == "B\n"
    assert not (target / "c.txt").exists()
    obd.umount_for_real(target)


async def test_view_in_dir_mode_gets_its_own_device_and_ro(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dir")
    a = await committed_dir_layer(obd, "A", files={"a.txt": "from A\n"})
    mounts = await obd.view("view", "A")
    own = obd.own_id(mounts)
    assert own != a
    assert [(m.type, m.source, list(m.options)) for m in mounts] == [
        ("bind", str(obd.mountpoint(own)), ["ro", "rbind"])
    ]
    obd.assert_attached(own, mounted="rw")
    obd.assert_detached(a)
    assert (obd.mountpoint(own) / "a.txt").read_text() == "from A\n"
    assert await obd.mounts("view") == mounts
    # A view has no work dir.
    assert not (obd.snapshot_dir(own) / "work").exists()


async def test_view_in_dev_mode_is_ro(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dir")
    await committed_dir_layer(obd, "A", files={"a.txt": "from A\n"})
    mounts = await obd.view("view", "A", {WRITABLE: "dev"})
    own = obd.own_id(mounts)
    device = obd.assert_attached(own, mounted=None)
    assert [(m.type, m.source, list(m.options)) for m in mounts] == [
        ("ext4", device, ["ro", "discard"])
    ]


async def test_dev_mode_hands_out_the_device_unmounted(writable_rootfs: WritableRootfs) -> None:
    # The VM runtime mounts it (a fresh ext4), writes and unmounts it again.
    files = {"vm.txt": "written in the VM\n"}
    rootfs = await writable_rootfs(mode="dev", key="vm-rootfs", files=files)
    obd, own = rootfs.obd, rootfs.id
    device = obd.assert_attached(own, mounted=None)
    assert [(m.type, m.source, list(m.options)) for m in rootfs.mounts] == [
        ("ext4", device, ["rw", "discard"])
    ]
    assert obd.mark(own) == device
    await obd.commit("vm-layer", "vm-rootfs")
    obd.assert_detached(own)
    child = await obd.prepare("next", "vm-layer", {WRITABLE: "dir"})
    assert (Path(child[0].source) / "vm.txt").read_text() == "written in the VM\n"


async def test_blob_fs_type_label_sets_mount_and_mkfs_options(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dir")
    labels = {BLOB_FS_TYPE: "ext4;noatime,nodiscard;-O ^has_journal -L obdtest -F"}
    mounts = await obd.prepare("rootfs", "", labels)
    own = obd.own_id(mounts)
    device = obd.assert_attached(own, mounted="rw")
    entry = mount_at(obd.mountpoint(own))
    assert entry is not None
    assert "noatime" in entry.options.split(",")
    assert "discard" not in entry.super_options.split(",")
    assert run("blkid", "-o", "value", "-s", "LABEL", device).stdout.strip() == "obdtest"


async def test_blob_fs_type_with_empty_mount_options(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dir")
    own = obd.own_id(await obd.prepare("rootfs", "", {BLOB_FS_TYPE: "ext4;"}))
    entry = mount_at(obd.mountpoint(own))
    assert entry is not None
    assert "discard" not in entry.super_options.split(",")


async def test_dev_mode_type_comes_from_blob_fs_type(start_obd: StartObd) -> None:
    obd = await start_obd(rwMode="dev")
    mounts = await obd.prepare("rootfs", "", {BLOB_FS_TYPE: "ext4;noatime"})
    assert (mounts[0].type, list(mounts[0].options)) == ("ext4", ["rw", "discard"])


async def test_parent_blob_fs_type_is_used_for_its_read_only_device(
    obd: Obd, images: Images
) -> None:
    chain_id, labels = images.single.layer_labels({BLOB_FS_TYPE: "ext4;noatime"})
    await expect_status(obd.prepare(f"extract-1 {chain_id}", "", labels), Status.ALREADY_EXISTS)
    parent_id = obd.latest_id()
    # The container's own label does not matter in overlayfs mode: the parent's does.
    await obd.prepare("rootfs", chain_id, {BLOB_FS_TYPE: "ext4;sync"})
    entry = mount_at(obd.mountpoint(parent_id))
    assert entry is not None
    assert "noatime" in entry.options.split(",")
    assert "sync" not in entry.options.split(",")


@pytest.mark.parametrize(
    "value",
    ["btrfs", "ext4;a;b;c", "ext4;rw,$(reboot)"],
    ids=["unknown-fs", "four-fields", "shell"],
)
async def test_bad_blob_fs_type_is_invalid_argument_and_leaves_nothing(
    start_obd: StartObd, value: str
) -> None:
    obd = await start_obd(rwMode="dir")
    await expect_status(obd.prepare("rootfs", "", {BLOB_FS_TYPE: value}), Status.INVALID_ARGUMENT)
    assert await obd.list_infos() == []
    await obd.wait_gone(1)
    assert obd.leftovers() == []
    own = obd.own_id(await obd.prepare("rootfs"))
    obd.assert_attached(own, mounted="rw")
