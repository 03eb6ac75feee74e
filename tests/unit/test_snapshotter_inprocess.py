"""Every kind of snapshot through the Snapshotter's public API, in-process on fake devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fake_devices import OTHER_OWNER
from support.inprocess import InProcess, remote_layer_labels, start_in_process

from obdsnap import labels as L
from obdsnap.device.backend import AttachError
from obdsnap.errors import AlreadyExists, SnapshotError
from obdsnap.mounts import Mount
from obdsnap.role import RwMode
from obdsnap.snapshotter import SnapshotterOptions
from obdsnap.storage import Kind

REMOTE_LABELS = remote_layer_labels(
    "remote-layer", "sha256:" + "ab" * 32, 4096, "registry.example/library/app:1"
)


async def unpack_plain(obd: InProcess, name: str, parent: str = "") -> int:
    """containerd unpacks a plain OCI layer: prepare, write its files, commit."""
    mounts = await obd.snapshotter.prepare(f"extract-{name}", parent, {})
    upper = _upper_of(mounts[0])
    (upper / f"{name}.txt").write_text(name)
    await obd.snapshotter.commit(name, f"extract-{name}", {})
    return obd.id_of(name)


async def unpack_remote(obd: InProcess, parent: str = "") -> int:
    with pytest.raises(AlreadyExists, match='target snapshot "remote-layer": already exists'):
        await obd.snapshotter.prepare("extract-remote", parent, REMOTE_LABELS)
    return obd.id_of("remote-layer")


def _upper_of(mount: Mount) -> Path:
    if mount.type == "bind":
        return Path(mount.source)
    return Path(next(o for o in mount.options if o.startswith("upperdir=")).split("=", 1)[1])


def config_of(obd: InProcess, snapshot_id: int) -> dict[str, object]:
    document: dict[str, object] = json.loads(obd.layout.block(snapshot_id).config.read_text())
    return document


async def test_plain_unpack_then_overlay_rootfs_and_view(obd: InProcess) -> None:
    base = await unpack_plain(obd, "base")
    assert obd.snapshotter.stat("base").kind == Kind.COMMITTED
    top = await unpack_plain(obd, "top", parent="base")
    mounts = await obd.snapshotter.prepare("rootfs", "top", {})
    fs = obd.layout.fs_dir
    rootfs = obd.id_of("rootfs")
    assert mounts == [
        Mount(
            "overlay",
            "overlay",
            (
                f"workdir={obd.layout.work_dir(rootfs)}",
                f"upperdir={fs(rootfs)}",
                f"lowerdir={fs(top)}:{fs(base)}",
            ),
        )
    ]
    assert await obd.snapshotter.mounts("rootfs") == mounts
    assert await obd.snapshotter.view("one", "base", {}) == [
        Mount("bind", str(fs(base)), ("ro", "rbind"))
    ]
    assert (await obd.snapshotter.view("two", "top", {}))[0].options == (
        f"lowerdir={fs(top)}:{fs(base)}",
    )
    usage = await obd.snapshotter.usage("base")
    assert usage.inodes == 2 and usage.size > 0
    assert obd.backend.devices == {} and obd.mounter.table == []
    for key in ("rootfs", "one", "two", "top", "base"):
        await obd.snapshotter.remove(key)
    assert obd.store.records() == []


async def test_remote_unpack_answers_already_exists_and_writes_the_device_config(
    obd: InProcess,
) -> None:
    remote = await unpack_remote(obd)
    info = obd.snapshotter.stat("remote-layer")
    assert info.kind == Kind.COMMITTED and info.labels[L.REMOTE] == L.REMOTE_VALUE
    assert obd.store.find("extract-remote") is None
    config = config_of(obd, remote)
    assert config["repoBlobUrl"] == "https://registry.example/v2/library/app/blobs"
    assert config["lowers"] == [
        {
            "digest": REMOTE_LABELS[L.BLOB_DIGEST],
            "size": 4096,
            "dir": str(obd.layout.fs_dir(remote)),
        }
    ]
    assert obd.backend.devices == {}  # a layer is attached when a container needs it


async def test_rootfs_on_a_block_parent_attaches_the_parents_device_read_only(
    obd: InProcess,
) -> None:
    remote = await unpack_remote(obd)
    mounts = await obd.snapshotter.prepare("rootfs", "remote-layer", {})
    lower = obd.layout.block(remote).mountpoint
    rootfs = obd.id_of("rootfs")
    assert mounts[0].type == "overlay"
    assert mounts[0].options[-1] == f"lowerdir={lower}"
    assert f"upperdir={obd.layout.fs_dir(rootfs)}" in mounts[0].options
    assert set(obd.backend.devices) == {remote}
    assert obd.mounter.mounted_source(lower) == str(obd.backend.node(remote))
    assert obd.mounter.table[0].options == "ro" and obd.mounter.filesystems == {}
    # A view on the same parent shares the device.
    assert await obd.snapshotter.view("view", "remote-layer", {}) == [
        Mount("bind", str(lower), ("ro", "rbind"))
    ]
    assert obd.backend.attaches == [remote]
    # The parent's device stays for the next container (autoRemoveDev is off).
    await obd.snapshotter.remove("rootfs")
    await obd.snapshotter.remove("view")
    assert set(obd.backend.devices) == {remote}


async def test_remove_with_auto_remove_dev_detaches_the_parent_unless_an_overlay_uses_it(
    tmp_path: Path,
) -> None:
    obd = await start_in_process(tmp_path, SnapshotterOptions(auto_remove_dev=True))
    try:
        remote = await unpack_remote(obd)
        lower = obd.layout.block(remote).mountpoint
        await obd.snapshotter.prepare("a", "remote-layer", {})
        obd.mounter.add_overlay(tmp_path / "container-a", [lower])
        await obd.snapshotter.remove("a")
        assert set(obd.backend.devices) == {remote}  # busy: kept
        obd.mounter.table = [m for m in obd.mounter.table if m.fs_type != "overlay"]
        await obd.snapshotter.prepare("b", "remote-layer", {})
        await obd.snapshotter.remove("b")
        assert obd.backend.devices == {} and not obd.mounter.is_mounted(lower)
    finally:
        await obd.close()


async def test_acceleration_unpack_binds_its_files_and_extends_the_parents_config(
    obd: InProcess,
) -> None:
    remote = await unpack_remote(obd)
    labels = {L.TARGET_SNAPSHOT_REF: "accel", L.ACCELERATION_LAYER: "yes"}
    mounts = await obd.snapshotter.prepare("extract-accel", "remote-layer", labels)
    accel = obd.id_of("extract-accel")
    assert mounts == [Mount("bind", str(obd.layout.fs_dir(accel)), ("rw", "bind"))]
    assert await obd.snapshotter.mounts("extract-accel") == mounts
    lowers = config_of(obd, accel)["lowers"]
    assert isinstance(lowers, list) and lowers[-1] == {"dir": str(obd.layout.fs_dir(accel))}
    assert lowers[0] == config_of(obd, remote)["lowers"][0]  # type: ignore[index]
    (obd.layout.fs_dir(accel) / "trace").write_text("prefetch")
    await obd.snapshotter.commit("accel", "extract-accel", labels)
    assert obd.snapshotter.stat("accel").kind == Kind.COMMITTED
    assert obd.backend.devices == {}
    # A container on it: the acceleration layer's device, with acceleration on.
    await obd.snapshotter.prepare("rootfs", "accel", {})
    assert set(obd.backend.devices) == {accel}
    assert config_of(obd, accel)["accelerationLayer"] is True


async def test_writable_dir_on_a_block_parent_then_commit_makes_a_local_layer(
    obd: InProcess,
) -> None:
    await unpack_remote(obd)
    mounts = await obd.snapshotter.prepare("w", "remote-layer", {L.WRITABLE: "dir"})
    own = obd.id_of("w")
    block = obd.layout.block(own)
    assert mounts == [Mount("bind", str(block.mountpoint), ("rw", "rbind"))]
    assert set(obd.backend.devices) == {own}  # its own device, opening the parent's lowers
    assert obd.mounter.filesystems == {}  # the parent's filesystem: no mkfs
    assert obd.mounter.mounted_source(block.mountpoint) == str(obd.backend.node(own))
    config = config_of(obd, own)
    assert config["upper"] == {"index": str(block.writable_index), "data": str(block.writable_data)}
    await obd.snapshotter.commit("layer", "w", {})
    assert obd.backend.devices == {} and obd.mounter.table == []
    assert obd.layout.commit_file(own).is_file() and not block.writable_data.exists()
    committed = obd.snapshotter.stat("layer")
    assert committed.labels[L.LOCAL_COMMIT_PATH] == str(obd.layout.commit_file(own))
    lowers = config_of(obd, own)["lowers"]
    assert isinstance(lowers, list) and lowers[-1] == {"dir": str(obd.layout.fs_dir(own))}
    assert config_of(obd, own)["upper"] == {}  # no writable layer any more
    assert obd.store.intents() == []
    # The committed layer is a block parent like any other.
    await obd.snapshotter.prepare("next", "layer", {})
    assert set(obd.backend.devices) == {own}


async def test_writable_dir_without_parent_gets_a_filesystem_once(tmp_path: Path) -> None:
    obd = await start_in_process(tmp_path, SnapshotterOptions(rw_mode=RwMode.DIR))
    try:
        await obd.snapshotter.prepare("w", "", {})
        own = obd.id_of("w")
        node = obd.backend.node(own)
        assert obd.mounter.filesystems == {node: "ext4"}
        await obd.restart()
        obd.backend.devices.clear()  # a reboot: no devices, no mounts
        obd.mounter.table.clear()
        obd.mounter.filesystems.clear()
        assert await obd.snapshotter.mounts("w") == [
            Mount("bind", str(obd.layout.block(own).mountpoint), ("rw", "rbind"))
        ]
        assert obd.mounter.filesystems == {}  # attached again, never mkfs'ed again
        await obd.snapshotter.remove("w")
        assert obd.backend.devices == {} and obd.mounter.table == []
    finally:
        await obd.close()


async def test_writable_dev_hands_the_device_itself_unmounted(obd: InProcess) -> None:
    await unpack_remote(obd)
    labels = {L.WRITABLE: "dev", L.BLOB_FS_TYPE: "xfs"}
    mounts = await obd.snapshotter.prepare("d", "remote-layer", labels)
    own = obd.id_of("d")
    assert mounts == [Mount("xfs", str(obd.backend.node(own)), ("rw", "discard"))]
    assert obd.mounter.table == [] and set(obd.backend.devices) == {own}
    assert await obd.snapshotter.mounts("d") == mounts
    await obd.snapshotter.remove("d")
    assert obd.backend.devices == {}


async def test_a_writable_layer_on_a_plain_parent_is_an_overlay(obd: InProcess) -> None:
    await unpack_plain(obd, "base")
    mounts = await obd.snapshotter.prepare("c", "base", {L.WRITABLE: "dir"})
    assert mounts[0].type == "overlay" and obd.backend.devices == {}
    assert obd.store.get("c").rw_mode == "overlayfs"


async def test_a_failed_attach_removes_the_snapshot_and_leaves_no_device(obd: InProcess) -> None:
    await unpack_remote(obd)
    obd.backend.fail_at("open", "blob unreachable")
    with pytest.raises(SnapshotError, match="blob unreachable"):
        await obd.snapshotter.prepare("w", "remote-layer", {L.WRITABLE: "dir"})
    assert obd.store.find("w") is None
    assert obd.backend.devices == {} and obd.mounter.table == []
    obd.mounter.fail_at("mount", "wrong fs type")
    with pytest.raises(SnapshotError, match="wrong fs type"):
        await obd.snapshotter.prepare("c", "remote-layer", {})
    assert obd.store.find("c") is None and obd.backend.devices == {}


async def test_a_device_of_another_snapshotter_under_the_same_id_is_refused(
    obd: InProcess,
) -> None:
    remote = await unpack_remote(obd)
    obd.backend.set_up_by_other(remote)
    with pytest.raises(AttachError, match="set up for another image"):
        await obd.snapshotter.prepare("c", "remote-layer", {})
    assert obd.backend.devices[remote].owner == OTHER_OWNER
