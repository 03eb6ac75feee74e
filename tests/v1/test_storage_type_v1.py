"""A snapshot's storage type (DESIGN-v1 §4): labels, ``fs/overlaybd.commit``,
``fs/overlaybd.sealed``, the writable data (in ``overlay.active.path`` when set),
``layer.tar``, then the device config.

The order is checked on the detector itself; what each type makes obdsnap do, through the
gRPC API on the simulator.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images
from support.mounts import mount_options
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap import labels as L
from obdsnap.layout import Layout
from obdsnap.overlaybd.storage_type import LSMT_MAGIC, detect_storage_type
from obdsnap.role import LOCAL_LAYER_REFUSED, StorageType

MAGIC = b"".join(value.to_bytes(8, "little") for value in LSMT_MAGIC) + b"\0" * 8
PLAIN = b"a plain file, no overlaybd magic at all"
REMOTE = {
    L.TARGET_SNAPSHOT_REF: "sha256:aa",
    L.BLOB_DIGEST: "sha256:bb",
    L.BLOB_SIZE: "1",
    L.IMAGE_REF: "example.com/a:b",
}

needs_simulator = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    for name in ("fs", "block"):
        (tmp_path / "snapshots" / "1" / name).mkdir(parents=True)
    return Layout(tmp_path)


def place(layout: Layout, files: dict[str, bytes]) -> None:
    """Files named as in the snapshot directory (``fs/overlaybd.commit``, ``layer.tar``...)."""
    for name, content in files.items():
        path = layout.snapshot_dir(1) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


COMMIT, SEALED, DATA = "fs/overlaybd.commit", "fs/overlaybd.sealed", "block/writable_data"
TAR, CONFIG = "layer.tar", "block/config.v1.json"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({COMMIT: MAGIC, SEALED: PLAIN, TAR: b""}, StorageType.LOCAL_BLOCK),
        ({COMMIT: PLAIN, SEALED: MAGIC, DATA: MAGIC}, StorageType.NORMAL),  # normal at once
        ({COMMIT: b"", SEALED: MAGIC, TAR: b""}, StorageType.LOCAL_BLOCK),  # empty: go on
        ({SEALED: PLAIN, DATA: MAGIC}, StorageType.NORMAL),
        ({SEALED: b"", DATA: MAGIC, TAR: b""}, StorageType.LOCAL_BLOCK),
        ({DATA: PLAIN, TAR: b""}, StorageType.NORMAL),
        ({TAR: b"", CONFIG: b"{}"}, StorageType.LOCAL_LAYER),
        ({DATA: b"", TAR: b""}, StorageType.LOCAL_LAYER),  # layer.tar before the data's error
        ({CONFIG: b"{}"}, StorageType.REMOTE_BLOCK),
        ({}, StorageType.NORMAL),
    ],
    ids=[
        "s4-step2-commit-magic",
        "s4-step2-commit-no-magic",
        "s4-step3-sealed-magic",
        "s4-step3-sealed-no-magic",
        "s4-step4-data-magic",
        "s4-step4-data-no-magic",
        "s4-step5-layer-tar",
        "s4-step5-layer-tar-over-empty-data",
        "s4-step6-config",
        "s4-step6-nothing",
    ],
)
def test_s4_checks_in_order(layout: Layout, files: dict[str, bytes], expected: StorageType) -> None:
    """DESIGN-v1 §4 steps 2-6: the first decisive check wins."""
    place(layout, files)
    assert detect_storage_type({}, layout, 1) is expected


def test_s4_step1_labels_come_first(layout: Layout) -> None:
    """DESIGN-v1 §4 step 1: the remote labels make a remote layer whatever the files say."""
    place(layout, {COMMIT: MAGIC, TAR: b""})
    assert detect_storage_type(REMOTE, layout, 1) is StorageType.REMOTE_BLOCK


def test_s4_step4_reads_the_data_in_overlay_active_path(layout: Layout, tmp_path: Path) -> None:
    """DESIGN-v1 §4 step 4: writable_data in overlay.active.path when set, else in block/."""
    active = tmp_path / "active"
    active.mkdir()
    (active / "writable_data").write_bytes(MAGIC)
    place(layout, {DATA: PLAIN})
    labels = {L.ACTIVE_PATH: str(active)}
    assert detect_storage_type(labels, layout, 1) is StorageType.LOCAL_BLOCK
    assert detect_storage_type({L.ACTIVE_PATH: ""}, layout, 1) is StorageType.NORMAL


def test_s4_step6_an_empty_writable_data_is_an_error(layout: Layout) -> None:
    """DESIGN-v1 §4 step 6: a data error other than "does not exist" is returned (empty too)."""
    place(layout, {DATA: b"", CONFIG: b"{}"})
    with pytest.raises(OSError, match="empty"):
        detect_storage_type({}, layout, 1)


# ---------------------------------------------------------------------- through the API


async def unpack_with(obd: Obd, key: str, files: dict[str, bytes], parent: str = "") -> int:
    """An unpack Prepare, ``files`` put into its snapshot directory; its ID."""
    mounts = await obd.prepare(f"extract-{key} sha256:{key}", parent)
    own = obd.own_id(mounts)
    for name, content in files.items():
        path = obd.snapshot_dir(own) / name
        await asyncio.to_thread(path.write_bytes, content)
    return own


@pytest.mark.root
@needs_simulator
async def test_s4_step3_a_sealed_layer_is_served_as_a_local_block_layer(
    obd: Obd, images: Images
) -> None:
    """DESIGN-v1 §4 step 3, §8 step 5: fs/overlaybd.sealed makes a local block layer whose
    device a child gets; localcommitpath names it (compress mode: the file that exists)."""
    blob = await asyncio.to_thread(images.single.layers[0].path.read_bytes)
    own = await unpack_with(obd, "sealed", {SEALED: blob})
    await obd.commit("layer", "extract-sealed sha256:sealed")
    labels = (await obd.stat("layer")).labels
    assert labels[L.LOCAL_COMMIT_PATH] == str(obd.fs(own) / "overlaybd.sealed")
    assert obd.config(own)["lowers"] == [{"dir": str(obd.fs(own))}]
    mounts = await obd.prepare("rootfs", "layer")
    assert mount_options(mounts[0])["lowerdir"] == str(obd.mountpoint(own))
    assert (obd.mountpoint(own) / "single.txt").read_text() == "single\n"


@pytest.mark.root
@needs_simulator
async def test_s4_step5_a_local_layer_is_converted_at_commit(obd: Obd) -> None:
    """DESIGN-v1 §4 step 5: layer.tar makes a local layer, converted at Commit (§13): a
    tarball its tools cannot read fails the commit and leaves the snapshot as it was."""
    own = await unpack_with(obd, "tar", {TAR: b"an OCI layer tar"})
    key = "extract-tar sha256:tar"
    error = await expect_status(obd.commit("layer", key), Status.UNKNOWN)
    assert "failed to construct overlaybd config" in str(error.message)
    assert (await obd.stat(key)).kind.name == "ACTIVE"
    await expect_status(obd.stat("layer"), Status.NOT_FOUND)
    assert not obd.config_path(own).exists()
    assert not (obd.snapshot_dir(own) / "layer.metadata").exists()


@pytest.mark.root
@needs_simulator
async def test_s4_step5_a_child_of_a_local_layer_is_refused(obd: Obd) -> None:
    """DESIGN-v1 §4 step 5: a snapshot on a local layer would need its conversion: refused."""
    own = await unpack_with(obd, "plain", {})
    await obd.commit("layer", "extract-plain sha256:plain")
    await asyncio.to_thread((obd.snapshot_dir(own) / TAR).write_bytes, b"placed later")
    error = await expect_status(obd.prepare("rootfs", "layer"), Status.FAILED_PRECONDITION)
    assert LOCAL_LAYER_REFUSED in str(error.message)
    await expect_status(obd.stat("rootfs"), Status.NOT_FOUND)


@pytest.mark.root
@needs_simulator
async def test_s4_step4_data_in_active_path_decides_the_committed_type(
    obd: Obd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §4 step 4: the writable data in overlay.active.path makes a local block layer."""
    active = tmp_path / "active"
    await asyncio.to_thread(active.mkdir)
    await asyncio.to_thread(shutil.copyfile, images.single.layers[0].path, active / "writable_data")
    key = "extract-a sha256:a"
    await obd.prepare(key, "", {L.ACTIVE_PATH: str(active)})
    await obd.commit("layer", key)
    assert L.LOCAL_COMMIT_PATH in (await obd.stat("layer")).labels
