"""Local OCI → TurboOCI conversion (DESIGN-v1 §13) through the gRPC API on the simulator: an
unpack prepared with ``convert2turbo-oci`` (§6 step 7), its ``layer.tar`` converted at Commit
with the overlaybd tools, and a rootfs on the layer served by its device (§8 step 5)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images, StartObd
from support.conversion import (
    LocalLayer,
    converted_layer,
    layer_tar,
    logged_tools,
    tool_runs,
    tree,
    unpack_layer,
)
from support.mounts import mount_at, mount_options
from support.simulator import MISSING
from support.snapshots import expect_status
from support.turbo import turbo_labels, unpack_turbo, write_metas

from obdsnap import labels as L
from obdsnap.genproto.containerd.services.snapshots import v1 as api
from tcmusim import layerfmt
from tcmusim.layerfmt import Magic

from .conftest import TurboImages

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

ACTIVE, COMMITTED = api.Kind(2), api.Kind(3)
BASE = {"etc/os-release": "base\n", "etc/keep": "kept\n", "bin/tool": "v1\n"}
MIDDLE = {"etc/.wh.keep": "", "bin/tool": "v2\n", "srv/new": "new\n"}
MERGED = {"etc/os-release": "base\n", "bin/tool": "v2\n", "srv/new": "new\n"}
EROFS = {L.BLOB_FS_TYPE: "erofs"}


async def rootfs_tree(obd: Obd, parent: LocalLayer, fs_type: str = "ext4") -> dict[str, str]:
    """A container's rootfs on ``parent``: an overlay on its device (``fs_type``), which holds
    this tree."""
    mounts = await obd.prepare(f"rootfs-on-{parent.name}", parent.name)
    assert mount_options(mounts[0])["lowerdir"] == str(obd.mountpoint(parent.id))
    obd.assert_attached(parent.id, mounted="ro")
    device_mount = mount_at(obd.mountpoint(parent.id))
    assert device_mount is not None and device_mount.fs_type == fs_type
    return await asyncio.to_thread(tree, obd.mountpoint(parent.id))


def steps(layer: LocalLayer, fs_type: str, *, mkfs: bool) -> list[list[str]]:
    """The tool runs of DESIGN-v1 §13 steps 2-6, in order."""
    temp = layer.temp
    data, index = str(temp / "writable_data"), str(temp / "writable_index")
    erofs = fs_type == "erofs"
    meta = layer.layer_tar if erofs else layer.meta
    export = (
        [] if erofs else [["turboOCI-apply", str(layer.layer_tar), str(layer.meta), "--export"]]
    )
    apply = [str(meta), str(temp / "config.v1.json"), "--service_config_path"]
    apply += [str(temp / "service.json"), "--fstype", fs_type, *([] if erofs else ["--import"])]
    return [
        *export,
        ["overlaybd-create", data, index, "256", "-s", "--turboOCI", *(["--mkfs"] if mkfs else [])],
        ["turboOCI-apply", *apply],
        ["overlaybd-commit", data, index, str(layer.commit_file), "-z", "--turboOCI"],
    ]


async def test_s6_step7_a_convert2turbo_oci_unpack_is_a_bind_of_fs(obd: Obd) -> None:
    """DESIGN-v1 §6 step 7: Prepare and Mounts answer {bind, fs/, [rw, rbind]}, parent or not."""
    base = await converted_layer(obd, "base")
    # unpack_layer checks Prepare's answer; on a parent too, it is no overlay.
    layer = await unpack_layer(obd, "middle", "base")
    assert await obd.mounts(layer.key) == layer.mounts
    assert base.temp.is_dir() and base.commit_file.exists()


async def test_s13_a_bottom_ext4_layer_is_converted_on_mkfs_and_served(
    obd: Obd, tmp_path: Path
) -> None:
    """DESIGN-v1 §13 steps 1-7 without a parent; §8 step 5: a local block layer."""
    layer = await unpack_layer(obd, "base", "", BASE, {"etc/alias": "os-release"})
    with logged_tools(obd, tmp_path / "runs") as log:
        await layer.commit({L.WRITABLE: "dir"})
    assert tool_runs(log) == steps(layer, "ext4", mkfs=True)
    info = await obd.stat("base")
    assert info.kind == COMMITTED
    assert info.labels[L.LOCAL_COMMIT_PATH] == str(layer.commit_file)
    assert L.WRITABLE not in info.labels and info.labels[L.CONVERT_TO_TURBO_OCI] == "true"
    assert obd.config(layer.id) == {
        "repoBlobUrl": "",
        "lowers": [layer.lower()],
        "upper": {},
        "resultFile": str(obd.block(layer.id) / "init-debug.log"),
    }
    assert layerfmt.magic_of(layer.commit_file) is Magic.ZFILE
    # Left as Go leaves them: temp/ and the tar meta.
    assert {"writable_data", "writable_index", "fake_target"} <= set(os_list(layer.temp))
    assert layer.meta.exists() and layer.layer_tar.exists()
    assert await rootfs_tree(obd, layer) == {**BASE, "etc/alias": "-> os-release"}


def os_list(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_s13_a_layer_on_a_converted_parent_stacks_on_its_lowers_without_mkfs(
    obd: Obd, tmp_path: Path
) -> None:
    """DESIGN-v1 §13 step 3: the parent's config has lowers: no --mkfs; its lowers come first."""
    base = await converted_layer(obd, "base", files=BASE)
    middle = await unpack_layer(obd, "middle", "base", MIDDLE)
    with logged_tools(obd, tmp_path / "runs") as log:
        await middle.commit()
    assert tool_runs(log) == steps(middle, "ext4", mkfs=False)
    assert obd.config(middle.id)["lowers"] == [base.lower(), middle.lower()]
    assert json.loads((middle.temp / "config.v1.json").read_text())["lowers"] == [base.lower()]
    assert await rootfs_tree(obd, middle) == MERGED


async def test_s13_erofs_layers_convert_the_tarball_itself(obd: Obd, tmp_path: Path) -> None:
    """DESIGN-v1 §13 steps 1-2, 5: blob-fs-type erofs: no export, no --import, no --mkfs."""
    base = await converted_layer(obd, "base", files=BASE, labels=EROFS)
    middle = await unpack_layer(obd, "middle", "base", MIDDLE)
    with logged_tools(obd, tmp_path / "runs") as log:
        await middle.commit(EROFS)
    assert tool_runs(log) == steps(middle, "erofs", mkfs=False)
    assert not middle.meta.exists()
    assert obd.config(middle.id)["lowers"] == [base.lower(), middle.lower()]
    assert layerfmt.magic_of(middle.commit_file) is Magic.ZFILE
    assert await rootfs_tree(obd, middle, "erofs") == MERGED


async def test_s13_the_default_fs_type_applies_without_a_label(
    start_obd: StartObd, tmp_path: Path
) -> None:
    """DESIGN-v1 §13 step 1: ``defaultFsType`` when the layer has no blob-fs-type label; the
    label, when set, wins whole."""
    obd = await start_obd(defaultFsType="erofs")
    layer = await unpack_layer(obd, "base", "", BASE)
    with logged_tools(obd, tmp_path / "runs") as log:
        await layer.commit()
    assert tool_runs(log) == steps(layer, "erofs", mkfs=False)
    assert await rootfs_tree(obd, layer, "erofs") == BASE
    other = await unpack_layer(obd, "other", "", BASE)
    with logged_tools(obd, tmp_path / "other-runs") as log:
        await other.commit({L.BLOB_FS_TYPE: "ext4"})
    assert tool_runs(log) == steps(other, "ext4", mkfs=True)


async def test_s13_configs_of_a_layer_on_a_remote_image_field_by_field(
    obd: Obd, images: Images
) -> None:
    """DESIGN-v1 §13 step 4: service.json, and config.v1.json with the parent's lowers and
    repoBlobUrl, its own resultFile and the conversion's upper; 0644 files in a 0755 temp/."""
    chain = await obd.unpack_remote(images.single)
    parent = obd.config(obd.latest_id())
    layer = await unpack_layer(obd, "top", chain[-1], MIDDLE)
    await layer.commit()
    temp = layer.temp
    service = {
        "registryFsVersion": "v2",
        "logPath": "",
        "logLevel": 1,
        "cacheConfig": {"cacheType": "file", "cacheDir": str(temp / "cache"), "cacheSizeGB": 4},
        "gzipCacheConfig": {"enable": False},
        "credentialConfig": {"mode": "file", "path": ""},
        "ioEngine": 0,
        "download": {"enable": False},
        "enableAudit": False,
    }
    assert (temp / "service.json").read_text() == json.dumps(service, separators=(",", ":"))
    config = {
        "repoBlobUrl": "https://quay.io/v2/org/single/blobs",
        "lowers": parent["lowers"],
        "upper": {
            "index": str(temp / "writable_index"),
            "data": str(temp / "writable_data"),
            "target": str(temp / "fake_target"),
        },
        "resultFile": str(obd.block(layer.id) / "init-debug.log"),
    }
    assert parent["repoBlobUrl"] == config["repoBlobUrl"]
    assert (temp / "config.v1.json").read_text() == json.dumps(config, separators=(",", ":"))
    modes = {name: (temp / name).stat().st_mode & 0o7777 for name in os_list(temp)}
    assert (temp.stat().st_mode & 0o7777, modes["service.json"]) == (0o755, 0o644)
    assert (modes["config.v1.json"], modes["fake_target"]) == (0o644, 0o644)
    assert (temp / "fake_target").stat().st_size == 0
    own = obd.config(layer.id)
    assert (own["repoBlobUrl"], own["lowers"]) == (
        config["repoBlobUrl"],
        [*parent["lowers"], layer.lower()],
    )
    expected = {"single.txt": "single\n", **{k: v for k, v in MIDDLE.items() if ".wh." not in k}}
    assert await rootfs_tree(obd, layer) == expected


async def test_s13_a_layer_converted_on_a_turbo_oci_image_stacks_on_its_metas(
    obd: Obd, turbo: TurboImages
) -> None:
    """DESIGN-v1 §13 step 4 with a TurboOCI parent (§12): its lowers and repoBlobUrl below."""
    ids = await unpack_turbo(obd, turbo.plain, ("ext4",))
    parent = obd.config(ids[-1])
    layer = await unpack_layer(obd, "local", turbo.plain.layers[-1].chain_id, MIDDLE)
    await layer.commit()
    own = obd.config(layer.id)
    assert (own["repoBlobUrl"], own["lowers"]) == (
        parent["repoBlobUrl"],
        [*parent["lowers"], layer.lower()],
    )
    expected = {**turbo.plain.files, "bin/tool": "v2\n", "srv/new": "new\n"}
    assert await rootfs_tree(obd, layer) == expected


async def test_s8_step5_turbo_oci_labels_win_over_a_layer_tar(
    obd: Obd, turbo: TurboImages, tmp_path: Path
) -> None:
    """DESIGN-v1 §8 step 5: a meta layer's TurboOCI labels decide before a layer.tar does."""
    image = turbo.plain
    labels = turbo_labels(image, 0)
    key = f"extract-0 {image.layers[0].chain_id}"
    own = obd.own_id(await obd.prepare(key, "", labels))
    write_metas(obd.fs(own), image.layers[0], ("ext4",))
    layer_tar(obd.snapshot_dir(own) / "layer.tar", {"ignored": "ignored\n"})
    with logged_tools(obd, tmp_path / "runs") as log:
        await obd.commit(image.layers[0].chain_id, key, labels)
    assert tool_runs(log) == []
    lower = obd.config(own)["lowers"][-1]
    assert lower["targetDigest"] == image.layers[0].target_digest and "targetFile" not in lower


async def test_s8_step5_sealing_names_the_sealed_file_in_localcommitpath(
    start_obd: StartObd,
) -> None:
    """DESIGN-v1 §22 quirk 5: writableCommit seal: localcommitpath is fs/overlaybd.sealed."""
    obd = await start_obd(writableCommit="seal")
    layer = await converted_layer(obd, "base", files=BASE)
    labels = (await obd.stat("base")).labels
    assert labels[L.LOCAL_COMMIT_PATH] == str(obd.fs(layer.id) / "overlaybd.sealed")
    assert await rootfs_tree(obd, layer) == BASE


async def test_s13_a_parent_that_is_no_overlaybd_layer_is_refused(obd: Obd, tmp_path: Path) -> None:
    """A plain OCI parent has no config to stack on: FAILED_PRECONDITION, nothing run or made."""
    await obd.prepare("extract-plain plain", "", {L.TARGET_SNAPSHOT_REF: "plain"})
    await obd.commit("plain", "extract-plain plain")
    layer = await unpack_layer(obd, "top", "plain", MIDDLE)
    with logged_tools(obd, tmp_path / "runs") as log:
        error = await expect_status(layer.commit(), Status.FAILED_PRECONDITION)
    assert "'plain' is not an overlaybd layer" in str(error.message)
    assert tool_runs(log) == [] and layer.leftovers() == []
    assert (await obd.stat(layer.key)).kind == ACTIVE
    await expect_status(obd.stat("top"), Status.NOT_FOUND)


async def test_s4_without_a_layer_tar_the_layer_commits_as_a_plain_one(
    obd: Obd, tmp_path: Path
) -> None:
    """DESIGN-v1 §4 step 5: no layer.tar, no local layer: no conversion, a normal layer."""
    layer = await unpack_layer(obd, "base", "", None)
    (obd.fs(layer.id) / "unpacked").write_text("by the differ\n")
    with logged_tools(obd, tmp_path / "runs") as log:
        await layer.commit()
    assert tool_runs(log) == [] and layer.leftovers() == []
    mounts = await obd.prepare("rootfs", "base")
    assert mount_options(mounts[0])["lowerdir"] == str(obd.fs(layer.id))
