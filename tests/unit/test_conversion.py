"""The local TurboOCI conversion (DESIGN-v1 §13) in-process: its pure parts, and the
conversion on one snapshot directory with tcmusim's tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.conversion import layer_tar
from support.inprocess import InProcess

from obdsnap import labels as L
from obdsnap.errors import StepFailed
from obdsnap.layout import ConversionDir, Layout
from obdsnap.mounts import Mount
from obdsnap.overlaybd import device_config
from obdsnap.overlaybd.conversion import conversion_config, conversion_fs_type, service_config
from obdsnap.overlaybd.device_config import DeviceConfig, Lower, Upper
from obdsnap.overlaybd.storage_type import LayerMagic, file_magic
from obdsnap.role import ParentLayer, PlainUnpack, RwMode, StorageType, role_of
from obdsnap.snapshot_mounts import MountedSnapshot, snapshot_mounts
from obdsnap.storage import Kind, Operation

BASE = DeviceConfig(
    repo_blob_url="https://registry.example/v2/ns/app/blobs",
    lowers=(Lower(digest="sha256:" + "ab" * 32, size=10, dir="/parent/fs"),),
    result_file="/snap/block/init-debug.log",
)


def test_the_fs_type_is_the_label_taken_whole_else_the_default() -> None:
    assert conversion_fs_type({L.BLOB_FS_TYPE: "erofs"}, "ext4") == "erofs"
    assert conversion_fs_type({L.BLOB_FS_TYPE: "ext4;discard"}, "erofs") == "ext4;discard"
    assert conversion_fs_type({}, "erofs") == "erofs"
    assert conversion_fs_type({L.BLOB_FS_TYPE: ""}, "ext4") == "ext4"


def test_the_service_config_caches_in_temp_and_never_downloads() -> None:
    conversion = ConversionDir(Path("/snap/temp"))
    assert json.dumps(service_config(conversion)) == json.dumps(
        {
            "registryFsVersion": "v2",
            "logPath": "",
            "logLevel": 1,
            "cacheConfig": {"cacheType": "file", "cacheDir": "/snap/temp/cache", "cacheSizeGB": 4},
            "gzipCacheConfig": {"enable": False},
            "credentialConfig": {"mode": "file", "path": ""},
            "ioEngine": 0,
            "download": {"enable": False},
            "enableAudit": False,
        }
    )


def test_the_conversion_config_is_the_parents_with_the_conversions_upper() -> None:
    conversion = ConversionDir(Path("/snap/temp"))
    flagged = DeviceConfig(
        repo_blob_url=BASE.repo_blob_url,
        lowers=BASE.lowers,
        result_file=BASE.result_file,
        upper=Upper(data="/elsewhere/data", index="/elsewhere/index", vsize=64),
        acceleration_layer=True,
        record_trace_path="/trace",
    )
    assert conversion_config(flagged, conversion) == DeviceConfig(
        repo_blob_url=BASE.repo_blob_url,
        lowers=BASE.lowers,
        upper=Upper(
            index="/snap/temp/writable_index",
            data="/snap/temp/writable_data",
            target="/snap/temp/fake_target",
        ),
        result_file=BASE.result_file,
    )


def local_layer(obd: InProcess, files: dict[str, str] | None) -> int:
    """Snapshot 1's directory, with a layer.tar of ``files`` (none: no layer.tar)."""
    new = obd.layout.snapshots / "new-1"
    obd.layout.build_new_snapshot_dir(new, active=True, parent_id=None)
    new.rename(obd.layout.snapshot_dir(1))
    if files is not None:
        layer_tar(obd.layout.layer_tar(1), files)
    return 1


def made(obd: InProcess, snapshot_id: int) -> list[str]:
    """What a conversion makes that is there."""
    paths = {
        "temp": obd.layout.conversion(snapshot_id).path,
        "layer.metadata": obd.layout.layer_metadata(snapshot_id),
        "overlaybd.commit": obd.layout.commit_file(snapshot_id),
        "config": obd.layout.block(snapshot_id).config,
    }
    return sorted(name for name, path in paths.items() if path.exists())


@pytest.mark.parametrize("fs_type", ["ext4", "erofs"])
async def test_without_layer_tar_the_export_is_skipped_and_the_apply_fails(
    obd: InProcess, fs_type: str
) -> None:
    """§13 step 2: no layer.tar, no export; step 5 then has no input: undone, one message."""
    snapshot_id = local_layer(obd, None)
    with pytest.raises(StepFailed) as failed:
        await obd.layers.conversion.convert(snapshot_id, fs_type, DeviceConfig())
    assert str(failed.value).startswith("failed to construct overlaybd config: ")
    assert "input_path: File does not exist" in str(failed.value)
    assert (failed.value.snapshot_id, failed.value.step) == (snapshot_id, "turboOCI-apply")
    assert made(obd, snapshot_id) == []


@pytest.mark.root
async def test_a_tar_meta_exported_before_serves_when_layer_tar_is_gone(obd: InProcess) -> None:
    """§13 step 2: the export is skipped without layer.tar; the tar meta there is applied."""
    snapshot_id = local_layer(obd, {"file": "data\n"})
    layer = obd.layout.layer_tar(snapshot_id)
    await obd.tools.export_tar_meta(layer, obd.layout.layer_metadata(snapshot_id))
    layer.unlink()
    await obd.layers.conversion.convert(snapshot_id, "ext4", DeviceConfig())
    assert file_magic(obd.layout.commit_file(snapshot_id)) is LayerMagic.ZFILE
    assert made(obd, snapshot_id) == ["layer.metadata", "overlaybd.commit", "temp"]


@pytest.mark.parametrize("had_config", [False, True])
async def test_undo_removes_a_config_written_since_but_not_one_kept(
    obd: InProcess, had_config: bool
) -> None:
    """A roll-back after the commit's config was written: it goes, unless a kept one exists
    (put back by the writable layer's settle)."""
    snapshot_id = local_layer(obd, {"file": "data\n"})
    block = obd.layout.block(snapshot_id)
    obd.layout.conversion(snapshot_id).path.mkdir()
    obd.layout.commit_file(snapshot_id).write_bytes(b"partial")
    obd.layout.layer_metadata(snapshot_id).write_bytes(b"meta")
    device_config.write_config(block.config, BASE)
    if had_config:
        block.kept_config.write_bytes(b"{}")
    await obd.layers.conversion.undo(snapshot_id)
    assert made(obd, snapshot_id) == (["config"] if had_config else [])
    assert obd.layout.layer_tar(snapshot_id).exists()


@pytest.mark.parametrize("parent", [None, StorageType.LOCAL_BLOCK, StorageType.NORMAL])
def test_a_convert2turbo_oci_unpack_binds_its_fs_parent_or_not(
    tmp_path: Path, parent: StorageType | None
) -> None:
    """DESIGN-v1 §6 step 7: {bind, fs/, [rw, rbind]}, where a plain unpack gets an overlay."""
    labels = {L.TARGET_SNAPSHOT_REF: "layer", L.CONVERT_TO_TURBO_OCI: "true"}
    parent_layer = None if parent is None else ParentLayer({}, parent)
    role = role_of("extract-1 layer", labels, RwMode.OVERLAYFS, parent_layer)
    assert role == PlainUnpack(to_turbo_oci=True)
    layout = Layout(tmp_path)
    snapshot = MountedSnapshot(2, Kind.ACTIVE, [1] if parent else [])
    assert snapshot_mounts(role, snapshot, layout, index_off=False) == [
        Mount("bind", str(layout.fs_dir(2)), ("rw", "rbind"))
    ]
    plain = role_of("extract-1 layer", {L.TARGET_SNAPSHOT_REF: "layer"}, RwMode.OVERLAYFS, None)
    assert plain == PlainUnpack(to_turbo_oci=False)


@pytest.mark.parametrize("own_config", [False, True])
async def test_a_conversion_cut_after_its_config_is_rolled_back_at_start_up(
    obd: InProcess, own_config: bool
) -> None:
    """A crash after the commit wrote the layer's config, before its row: start-up removes
    the config, or puts back the one the snapshot had (kept before the intent)."""
    await obd.snapshotter.prepare("extract-x x", "", {L.TARGET_SNAPSHOT_REF: "x"})
    snapshot_id = obd.id_of("extract-x x")
    layer_tar(obd.layout.layer_tar(snapshot_id), {"file": "data\n"})
    block = obd.layout.block(snapshot_id)
    before = DeviceConfig(lowers=(Lower(dir="/own/files"),))
    if own_config:
        device_config.write_config(block.config, before)
        await obd.layers.writable.keep_config(snapshot_id)
    await obd.open_intent(snapshot_id, Operation.COMMIT).__aenter__()
    obd.layout.conversion(snapshot_id).path.mkdir()
    obd.layout.commit_file(snapshot_id).write_bytes(b"the layer file")
    device_config.write_config(block.config, BASE)
    report = await obd.restart()
    assert report.settled == [f"commit of snapshot {snapshot_id} rolled back"]
    assert made(obd, snapshot_id) == (["config"] if own_config else [])
    if own_config:
        assert device_config.read_config(block.config) == before
    assert not block.kept_config.exists()
