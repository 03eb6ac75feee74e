"""BlockLayers in-process: device configs from the parent, writable layers (tcmusim's tools)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from support.inprocess import InProcess, remote_layer_labels

from obdsnap import labels as L
from obdsnap.errors import InvalidArgument
from obdsnap.overlaybd.device_config import DeviceConfig, Lower
from obdsnap.overlaybd.storage_type import StorageType
from obdsnap.overlaybd.tools import ZFileConfig
from obdsnap.role import ParentLayer, trace_flags
from obdsnap.storage import Kind, Record, Usage

DIGEST = "sha256:" + "ef" * 32
REMOTE = remote_layer_labels("layer", DIGEST, 512, "registry.example/ns/app:2")


async def snapshot(
    obd: InProcess,
    kind: Kind,
    key: str,
    parent: Record | None = None,
    labels: Mapping[str, str] | None = None,
) -> Record:
    """A row and its directory, as the Snapshotter makes them."""
    parent_key = parent.key if parent else ""
    record = await obd.store.create(kind, key, parent_key, labels or {}, "dir")
    new = obd.layout.snapshots / f"new-{key}"
    obd.layout.build_new_snapshot_dir(
        new, active=kind == Kind.ACTIVE, parent_id=parent.id if parent else None
    )
    new.rename(obd.layout.snapshot_dir(record.id))
    return record


async def remote_layer(obd: InProcess) -> Record:
    """The committed remote layer ``layer``, as the remote unpack leaves it."""
    record = await snapshot(obd, Kind.ACTIVE, "extract-layer", None, REMOTE)
    await obd.layers.write_remote_config(record, None)
    return await obd.store.commit(record.key, "layer", Usage(), REMOTE)


async def test_a_remote_layers_config_names_its_blob(obd: InProcess) -> None:
    record = await remote_layer(obd)
    config = await obd.layers.read_config(record.id)
    assert config.repo_blob_url == "https://registry.example/v2/ns/app/blobs"
    # As the Go snapshotter writes it: the blob lives in the layer's own fs/ (DESIGN §8).
    fs_dir = str(obd.layout.fs_dir(record.id))
    assert config.lowers == (Lower(digest=DIGEST, size=512, dir=fs_dir),)
    assert config.result_file == str(obd.layout.block(record.id).result_file)
    assert await obd.layers.storage_type(record) is StorageType.REMOTE_BLOCK


async def test_a_bad_blob_size_is_invalid(obd: InProcess) -> None:
    record = await snapshot(obd, Kind.ACTIVE, "extract-bad", None, {**REMOTE, L.BLOB_SIZE: "x"})
    with pytest.raises(InvalidArgument, match="blob-size is not a number: 'x'"):
        await obd.layers.write_remote_config(record, None)


async def test_configs_start_from_the_parents(obd: InProcess) -> None:
    parent = await remote_layer(obd)
    child = await snapshot(obd, Kind.ACTIVE, "child", parent)
    config = await obd.layers.config_from_parent(child.id, parent)
    parent_config = await obd.layers.read_config(parent.id)
    assert config == DeviceConfig(
        repo_blob_url=parent_config.repo_blob_url,
        lowers=parent_config.lowers,
        result_file=str(obd.layout.block(child.id).result_file),
    )
    assert await obd.layers.config_from_parent(child.id, None) == DeviceConfig(
        result_file=str(obd.layout.block(child.id).result_file)
    )


async def test_an_acceleration_layer_needs_a_block_parent(obd: InProcess) -> None:
    await obd.snapshotter.prepare("extract-plain", "", {})
    await obd.snapshotter.commit("plain", "extract-plain", {})
    labels = {L.TARGET_SNAPSHOT_REF: "accel", L.ACCELERATION_LAYER: "yes"}
    with pytest.raises(InvalidArgument, match="needs an overlaybd parent layer"):
        await obd.snapshotter.prepare("extract-accel", "plain", labels)
    assert await obd.layers.storage_type(obd.store.get("plain")) is StorageType.NORMAL
    assert obd.store.find("extract-accel") is None


async def test_trace_flags_go_to_the_parent_and_the_writable_layer(obd: InProcess) -> None:
    parent = await remote_layer(obd)
    child = await snapshot(obd, Kind.ACTIVE, "w", parent)
    await obd.layers.create_writable_layer(child, parent)
    trace = {L.RECORD_TRACE: "yes", L.RECORD_TRACE_PATH: "/var/trace/app"}
    flags = trace_flags(ParentLayer(parent.info.labels, StorageType.REMOTE_BLOCK), trace)
    await obd.layers.set_trace_flags(parent.id, child.id, flags)
    for snapshot_id in (parent.id, child.id):
        config = await obd.layers.read_config(snapshot_id)
        assert config.record_trace_path == "/var/trace/app" and not config.acceleration_layer


async def test_writable_layer_create_commit_and_drop(obd: InProcess) -> None:
    parent = await remote_layer(obd)
    active = await snapshot(obd, Kind.ACTIVE, "w", parent)
    block = obd.layout.block(active.id)
    await obd.layers.create_writable_layer(active, parent)
    assert block.writable_data.is_file() and block.writable_index.is_file()
    config = await obd.layers.read_config(active.id)
    assert config.upper is not None and config.upper.data == str(block.writable_data)
    assert config.lowers == (await obd.layers.read_config(parent.id)).lowers
    assert await obd.layers.storage_type(active) is StorageType.LOCAL_BLOCK
    await obd.layers.writable.compress(active.id, ZFileConfig("lz4", 4))
    assert obd.layout.commit_file(active.id).is_file()
    assert not obd.layout.partial_commit_file(active.id).exists()
    await obd.layers.writable.keep_config(active.id)
    await obd.layers.write_local_config(active, parent)
    local = await obd.layers.read_config(active.id)
    assert local.upper is None or local.upper.data == ""
    assert local.lowers[-1] == Lower(dir=str(obd.layout.fs_dir(active.id)))
    await obd.layers.writable.settle(active.id, committed=True)
    assert not block.writable_data.exists() and not block.kept_config.exists()
    assert obd.layout.commit_file(active.id).is_file()


async def test_a_commit_rolled_back_leaves_the_writable_layer_as_it_was(obd: InProcess) -> None:
    parent = await remote_layer(obd)
    active = await snapshot(obd, Kind.ACTIVE, "w", parent)
    await obd.layers.create_writable_layer(active, parent)
    before = obd.layout.block(active.id).config.read_bytes()
    await obd.layers.writable.compress(active.id, ZFileConfig())
    await obd.layers.writable.keep_config(active.id)
    await obd.layers.writable.keep_config(active.id)  # a retried commit keeps the original
    await obd.layers.write_local_config(active, parent)
    await obd.layers.writable.settle(active.id, committed=False)
    assert obd.layout.block(active.id).config.read_bytes() == before
    assert not obd.layout.commit_file(active.id).exists()
    assert not obd.layout.block(active.id).kept_config.exists()
    await obd.layers.writable.settle(active.id, committed=False)  # twice: nothing to undo


async def test_a_failing_commit_tool_names_its_step(obd: InProcess) -> None:
    parent = await remote_layer(obd)
    active = await snapshot(obd, Kind.ACTIVE, "w", parent)
    await obd.layers.create_writable_layer(active, parent)
    obd.layout.block(active.id).writable_index.unlink()
    with pytest.raises(Exception) as raised:
        await obd.layers.writable.compress(active.id, ZFileConfig())
    assert getattr(raised.value, "step", "") == "overlaybd-commit"
    assert getattr(raised.value, "snapshot_id", None) == active.id
    assert not obd.layout.commit_file(active.id).exists()
