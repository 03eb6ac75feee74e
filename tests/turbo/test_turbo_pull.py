"""DESIGN-v1 §12: TurboOCI images pulled as containerd's unpacker pulls them.

Each meta layer is unpacked as a normal layer; its Commit writes the device
config (the parent's lowers plus the meta, the original blob and ``fs/``); a
container's rootfs is then an overlay on the top layer's device, whose file
system is the metas' (§11).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import Images, StartObd
from support.mounts import mount_at, mount_options
from support.simulator import MISSING
from support.snapshots import expect_status
from support.turbo import (
    LAYER_FILES,
    PackedTurboImage,
    TurboImage,
    turbo_labels,
    unpack_packed_turbo,
    unpack_turbo,
    unpack_turbo_layer,
    write_metas,
)

from obdsnap.labels import IMAGE_REF, REMOTE

from .conftest import TurboImages

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

DOCKER_URL = "https://registry-1.docker.io/v2/library/turbo/blobs"
PLAIN_URL = "https://registry.example.com:5000/v2/team/plain/blobs"


def turbo_lowers(
    obd: Obd, image: TurboImage, ids: Sequence[int], meta: str
) -> list[dict[str, Any]]:
    """The lowers §12 rule 2 asks for, with the bottom's meta ``meta`` in every layer."""
    lowers: list[dict[str, Any]] = []
    for layer, snapshot_id in zip(image.layers, ids, strict=False):
        fs_dir = obd.fs(snapshot_id)
        lower = {"gzipIndex": str(fs_dir / "gzip.meta")} if layer.gzipped else {}
        lower |= {"file": str(fs_dir / meta), "targetDigest": layer.target_digest}
        lowers.append(lower | {"dir": str(fs_dir)})
    return lowers


def expected_config(obd: Obd, url: str, lowers: list[dict[str, Any]], top: int) -> dict[str, Any]:
    result_file = str(obd.block(top) / "init-debug.log")
    return {"repoBlobUrl": url, "lowers": lowers, "upper": {}, "resultFile": result_file}


def assert_rootfs_reads(
    obd: Obd, image: TurboImage, top_id: int, fs_type: str, target: Path
) -> None:
    """The top layer's device is mounted read-only as ``fs_type`` and holds the image."""
    entry = mount_at(obd.mountpoint(top_id))
    assert entry is not None and entry.fs_type == fs_type, entry
    assert entry.options.split(",")[0] == "ro"
    for name, content in image.files.items():
        assert (target / name).read_text() == content, name


@pytest.mark.parametrize("fs_type", ["erofs", "ext4"])
async def test_three_layer_pull_commits_turbo_configs_and_serves_a_rootfs(
    obd: Obd, turbo: TurboImages, tmp_path: Path, fs_type: str
) -> None:
    image = turbo.gzip
    metas = ("erofs", "ext4") if fs_type == "erofs" else ("ext4",)
    ids: list[int] = []
    for index, layer in enumerate(image.layers):
        labels = turbo_labels(image, index)
        key, snapshot_id, mounts = await unpack_turbo_layer(obd, image, index, metas)
        ids.append(snapshot_id)
        # §12 rule 1: unpacked as a normal layer, no ALREADY_EXISTS; containerd fills fs/.
        if index == 0:
            assert [(m.type, m.source) for m in mounts] == [("bind", str(obd.fs(snapshot_id)))]
        else:
            assert mount_options(mounts[0])["upperdir"] == str(obd.fs(snapshot_id))
        await expect_status(obd.stat(key), Status.NOT_FOUND)
        info = await obd.stat(layer.chain_id)
        assert (info.kind.name, info.labels) == ("COMMITTED", labels)
        assert REMOTE not in info.labels
        config = obd.config(snapshot_id)
        lowers = turbo_lowers(obd, image, ids, f"{fs_type}.fs.meta")
        assert config == expected_config(obd, DOCKER_URL, lowers, snapshot_id)
        # Go's key order, and no digest or size in a TurboOCI lower.
        top = config["lowers"][-1]
        assert list(top) == [
            *(["gzipIndex"] if layer.gzipped else []),
            "file",
            "targetDigest",
            "dir",
        ]
        assert os.stat(obd.config_path(snapshot_id)).st_mode & 0o777 == 0o600
        obd.assert_detached(snapshot_id)

    rootfs = tmp_path / "rootfs"
    mounts = await obd.mount_container("container", image.layers[-1].chain_id, rootfs)
    assert mount_options(mounts[0])["lowerdir"] == str(obd.mountpoint(ids[-1]))
    obd.assert_attached(ids[-1], mounted="ro")
    assert_rootfs_reads(obd, image, ids[-1], fs_type, rootfs)
    (rootfs / "written.txt").write_text("by the container\n")
    assert (obd.fs(obd.latest_id()) / "written.txt").read_text() == "by the container\n"
    assert await obd.mounts("container") == mounts
    obd.umount_for_real(rootfs)
    # After a reboot, Mounts attaches the device again with the same file system.
    obd.detach_like_reboot(ids[-1])
    assert await obd.mounts("container") == mounts
    entry = mount_at(obd.mountpoint(ids[-1]))
    assert entry is not None and entry.fs_type == fs_type, entry


async def test_unpack_prepare_writes_no_config(obd: Obd, turbo: TurboImages) -> None:
    """§12 rule 1: the blob labels do not make the unpack a remote layer."""
    image = turbo.plain
    key = f"extract-0 {image.layers[0].chain_id}"
    await obd.prepare(key, "", turbo_labels(image, 0))
    assert (await obd.stat(key)).kind.name == "ACTIVE"
    assert not obd.config_path(obd.latest_id()).exists()


@pytest.mark.parametrize(
    ("turbo_fs_type", "chosen"),
    [
        (None, "erofs"),
        (["erofs", "ext4"], "erofs"),
        (["ext4"], "ext4"),
        (["ext4", "erofs"], "ext4"),
    ],
)
async def test_turbo_fs_type_orders_the_bottom_layers_choice(
    start_obd: StartObd,
    turbo: TurboImages,
    tmp_path: Path,
    turbo_fs_type: list[str] | None,
    chosen: str,
) -> None:
    """§12 rule 3: the first of turboFsType the bottom layer has; the other layers follow."""
    settings = {} if turbo_fs_type is None else {"turboFsType": turbo_fs_type}
    obd = await start_obd(**settings)
    image = turbo.plain
    ids = await unpack_turbo(obd, image, ("erofs", "ext4"))
    lowers = turbo_lowers(obd, image, ids, f"{chosen}.fs.meta")
    assert obd.config(ids[-1]) == expected_config(obd, PLAIN_URL, lowers, ids[-1])
    rootfs = tmp_path / "rootfs"
    await obd.mount_container("container", image.layers[-1].chain_id, rootfs)
    assert_rootfs_reads(obd, image, ids[-1], chosen, rootfs)
    obd.umount_for_real(rootfs)


async def test_a_bottom_layer_without_metas_names_the_ext4_meta(
    obd: Obd, turbo: TurboImages
) -> None:
    image = turbo.plain
    ids = [(await unpack_turbo_layer(obd, image, 0, ()))[1]]
    ids.append((await unpack_turbo_layer(obd, image, 1, ("erofs", "ext4")))[1])
    lowers = turbo_lowers(obd, image, ids, "ext4.fs.meta")
    assert obd.config(ids[-1]) == expected_config(obd, PLAIN_URL, lowers, ids[-1])


def proc_filesystems(path: Path, *, erofs: bool) -> Path:
    path.write_text("nodev\tsysfs\nnodev\tproc\n\text4\n" + ("\terofs\n" if erofs else ""))
    return path


def stand_in(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}")
    path.chmod(0o755)
    return path


async def test_a_kernel_without_erofs_takes_the_ext4_metas(
    start_obd: StartObd, turbo: TurboImages, tmp_path: Path
) -> None:
    """§12 rule 4: not in the list and modprobe fails: erofs metas are skipped."""
    calls = tmp_path / "calls"
    modprobe = stand_in(
        tmp_path / "modprobe", f'echo "$@" >> {calls}\necho no module >&2\nexit 1\n'
    )
    filesystems = proc_filesystems(tmp_path / "filesystems", erofs=False)
    obd = await start_obd(procFilesystems=str(filesystems), modprobeCommand=str(modprobe))
    ids = await unpack_turbo(obd, turbo.plain, ("erofs", "ext4"))
    lowers = turbo_lowers(obd, turbo.plain, ids, "ext4.fs.meta")
    assert obd.config(ids[-1]) == expected_config(obd, PLAIN_URL, lowers, ids[-1])
    assert calls.read_text() == "erofs\n"


async def test_modprobe_that_loads_erofs_is_run_once_per_process(
    start_obd: StartObd, turbo: TurboImages, tmp_path: Path
) -> None:
    """§12 rule 4: modprobe erofs, the list read again; the answer is kept for the process."""
    calls = tmp_path / "calls"
    filesystems = proc_filesystems(tmp_path / "filesystems", erofs=False)
    modprobe = stand_in(
        tmp_path / "modprobe", f'echo "$@" >> {calls}\nprintf "\\terofs\\n" >> {filesystems}\n'
    )
    obd = await start_obd(procFilesystems=str(filesystems), modprobeCommand=str(modprobe))
    for image in (turbo.plain, turbo.gzip):
        ids = [(await unpack_turbo_layer(obd, image, 0, ("erofs", "ext4")))[1]]
        lowers = turbo_lowers(obd, image, ids, "erofs.fs.meta")
        assert obd.config(ids[0])["lowers"] == lowers
    assert calls.read_text() == "erofs\n"


async def test_turbo_oci_ext4_flag_puts_every_lower_on_its_ext4_meta(
    obd: Obd, turbo: TurboImages, tmp_path: Path
) -> None:
    """§12 rule 5 with §22 quirk 12: absolute paths; the device is the ext4 one."""
    (obd.root / ".TurboOCI_ext4").write_bytes(b"")
    image = turbo.gzip
    ids = await unpack_turbo(obd, image, ("erofs", "ext4"))
    lowers = turbo_lowers(obd, image, ids, "ext4.fs.meta")
    assert obd.config(ids[-1]) == expected_config(obd, DOCKER_URL, lowers, ids[-1])
    rootfs = tmp_path / "rootfs"
    await obd.mount_container("container", image.layers[-1].chain_id, rootfs)
    assert_rootfs_reads(obd, image, ids[-1], "ext4", rootfs)
    obd.umount_for_real(rootfs)


async def test_legacy_fastoci_labels_make_the_same_layers(obd: Obd, turbo: TurboImages) -> None:
    image = turbo.gzip
    ids = []
    for index in range(len(image.layers)):
        labels = turbo_labels(image, index, legacy=True)
        ids.append((await unpack_turbo_layer(obd, image, index, ("ext4",), labels))[1])
    lowers = turbo_lowers(obd, image, ids, "ext4.fs.meta")
    assert obd.config(ids[-1]) == expected_config(obd, DOCKER_URL, lowers, ids[-1])


async def test_uncompressed_originals_have_no_gzip_index(obd: Obd, turbo: TurboImages) -> None:
    ids = await unpack_turbo(obd, turbo.plain, ("ext4",))
    assert all("gzipIndex" not in lower for lower in obd.config(ids[-1])["lowers"])
    gzip_ids = await unpack_turbo(obd, turbo.gzip, ("ext4",))
    with_index = ["gzipIndex" in lower for lower in obd.config(gzip_ids[-1])["lowers"]]
    assert with_index == [True, False, True]


async def test_commit_without_an_image_ref_fails_and_keeps_the_layer_active(
    obd: Obd, turbo: TurboImages
) -> None:
    """§12 rule 2: plain ``ctr pull`` (no label handlers): UNKNOWN, nothing committed."""
    image = turbo.plain
    layer = image.layers[0]
    labels = turbo_labels(image, 0, ref_label="")
    key = f"extract-0 {layer.chain_id}"
    await obd.prepare(key, "", labels)
    snapshot_id = obd.latest_id()
    write_metas(obd.fs(snapshot_id), layer, ("ext4",))
    error = await expect_status(obd.commit(layer.chain_id, key, labels), Status.UNKNOWN)
    assert error.message is not None
    assert error.message.startswith(
        f"failed to construct overlaybd config: unexpect storage 1 of snapshot {layer.chain_id}"
    )
    assert (await obd.stat(key)).kind.name == "ACTIVE"
    await expect_status(obd.stat(layer.chain_id), Status.NOT_FOUND)
    assert not obd.config_path(snapshot_id).exists()
    # Still serving: the same layer commits with its image ref.
    await obd.commit(layer.chain_id, key, {**labels, IMAGE_REF: image.ref})
    assert obd.config(snapshot_id)["lowers"] == turbo_lowers(
        obd, image, [snapshot_id], "ext4.fs.meta"
    )


async def test_docker_init_layer_mounts_a_turbo_image_with_its_metas_fs_type(
    start_obd: StartObd, turbo: TurboImages
) -> None:
    """§17 with §11: moby's init layer attaches the image top with the metas' file system,
    not ``defaultFsType`` (which would not mount it)."""
    obd = await start_obd(runtimeType="docker", defaultFsType="xfs")
    image = turbo.plain
    ids = await unpack_turbo(obd, image, ("ext4",))
    await obd.prepare("moby/1/c1-init-key", image.layers[-1].chain_id)
    obd.assert_attached(ids[-1], mounted="ro")
    entry = mount_at(obd.mountpoint(ids[-1]))
    assert entry is not None and entry.fs_type == "ext4", entry
    assert (obd.mountpoint(ids[-1]) / "three.txt").read_text() == "layer 3\n"


@pytest.mark.parametrize(("turbo_fs_type", "fs_type"), [(["erofs"], "erofs"), (["ext4"], "ext4")])
async def test_an_image_whose_metas_hold_no_data_reads_it_from_the_originals(
    start_obd: StartObd,
    packed_turbo: PackedTurboImage,
    tmp_path: Path,
    turbo_fs_type: list[str],
    fs_type: str,
) -> None:
    """§12: the metas as the convertor makes them; the device reads each file's data from the
    original (gzip) blob its lower's targetDigest names, through the gzip index."""
    obd = await start_obd(turboFsType=turbo_fs_type)
    ids = await unpack_packed_turbo(obd, packed_turbo)
    lowers = obd.config(ids[-1])["lowers"]
    assert [lower["targetDigest"] for lower in lowers] == [
        layer.target_digest for layer in packed_turbo.layers
    ]
    assert {Path(lower["file"]).name for lower in lowers} == {f"{fs_type}.fs.meta"}
    rootfs = tmp_path / "rootfs"
    await obd.mount_container("container", packed_turbo.chain_ids[-1], rootfs)
    entry = mount_at(obd.mountpoint(ids[-1]))
    assert entry is not None and entry.fs_type == fs_type, entry
    expected: dict[str, str] = {}
    for files in LAYER_FILES:
        expected.update(files)
    for name, content in expected.items():
        assert (rootfs / name).read_text() == content, name
    obd.umount_for_real(rootfs)


async def test_a_turbo_layer_on_a_baselayer_without_meta_has_no_file(
    obd: Obd, images: Images, turbo: TurboImages
) -> None:
    """§12 rule 7 with §22 quirk 12: the bottom lower (a plain overlaybd layer) has no
    ``file``, so the layer above names none either (Go names its fs/ directory)."""
    base_chain, base_id = await obd.unpack_top(images.single)
    image = turbo.plain
    layer = image.layers[1]
    labels = {**turbo_labels(image, 1), IMAGE_REF: images.single.ref}
    key = f"extract-1 {layer.chain_id}"
    await obd.prepare(key, base_chain, labels)
    own = obd.latest_id()
    write_metas(obd.fs(own), layer, ("ext4",))
    await obd.commit(layer.chain_id, key, labels)
    base = images.single.layers[0]
    assert obd.config(own)["lowers"] == [
        {"digest": base.digest, "size": base.size, "dir": str(obd.fs(base_id))},
        {"targetDigest": layer.target_digest, "dir": str(obd.fs(own))},
    ]
