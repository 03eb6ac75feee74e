"""TurboOCI images built by ``tcmusim mkimage --turbo-oci`` (DESIGN-v1 §12, §14, §24): small
meta layers next to the original layers, served by the simulator as obdsnap configures them."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import processes
from support.conversion import layer_tar

from obdsnap import labels
from tcmusim.mkimage.turbo import (
    TurboBuiltLayer,
    build_turbo_layers,
    meta_name,
    turbo_annotations,
    unpack_meta_layer,
)
from tcmusim.testing import PACKAGE_ROOT, RunningSimulator

from .protocol import Protocol, write_config
from .test_devices import mounted
from .test_turbo_serving import open_failure
from .test_turbo_tools import serve, served
from .turbo_steps import convert, must, new_snap

pytestmark = pytest.mark.root

__all__ = ["served"]

URL = "https://registry.invalid/v2/library/turbo/blobs"
BIG = "".join(f"line {i} of a file that spans many blocks\n" for i in range(2000))
MID = "".join(f"middle {i}\n" for i in range(3000))
LAYERS = (
    {"etc/os-release": "base\n", "etc/keep": "kept\n", "bin/tool": "v1\n", "var/cache/x": "x\n",
     "usr/lib/big": BIG},
    {"etc/.wh.keep": "", "bin/tool": "v2\n", "var/cache/.wh..wh..opq": "", "var/cache/y": "y\n",
     "usr/lib/mid": MID},
    {"srv/data": "top\n", "bin/.wh.tool": ""},
)  # fmt: skip
LINKS: tuple[dict[str, str], ...] = ({}, {}, {"etc/alias": "os-release"})
MERGED = (
    {"etc/os-release": "base\n", "etc/keep": "kept\n", "bin/tool": "v1\n", "var/cache/x": "x\n",
     "usr/lib/big": BIG},
    {"etc/os-release": "base\n", "bin/tool": "v2\n", "var/cache/y": "y\n", "usr/lib/big": BIG,
     "usr/lib/mid": MID},
    {"etc/os-release": "base\n", "var/cache/y": "y\n", "usr/lib/big": BIG, "usr/lib/mid": MID,
     "srv/data": "top\n", "etc/alias": "-> os-release"},
)  # fmt: skip


def sources(work: Path) -> list[Path]:
    work.mkdir(parents=True, exist_ok=True)
    return [
        layer_tar(work / f"layer{index}.tar", files, links)
        for index, (files, links) in enumerate(zip(LAYERS, LINKS, strict=True))
    ]


@pytest.fixture(scope="module")
def images(
    sim: RunningSimulator, tmp_path_factory: pytest.TempPathFactory
) -> dict[bool, list[TurboBuiltLayer]]:
    """The three-layer image with both fs metas: gzip originals (True) and plain tars (False)."""
    work = tmp_path_factory.mktemp("layers")
    return {
        gz: build_turbo_layers(
            sources(work / str(gz)),
            sim.blob_store,
            fs_types=("erofs", "ext4"),
            gzip_originals=gz,
            size_gb=1,
        )
        for gz in (True, False)
    }


def unpacked_lowers(layers: list[TurboBuiltLayer], root: Path, fs: str) -> list[dict[str, object]]:
    """Each meta layer unpacked into a snapshot's fs/, and the lowers obdsnap configures."""
    lowers: list[dict[str, object]] = []
    for index, layer in enumerate(layers):
        fs_dir = root / f"snap{index}" / "fs"
        unpack_meta_layer(Path(layer.path), fs_dir)
        lower: dict[str, object] = {"file": str(fs_dir / meta_name(fs))}
        lower.update(targetDigest=layer.target_digest, dir=str(fs_dir))
        if layer.target_media_type in labels.GZIP_LAYER_MEDIA_TYPES:
            lower = {"gzipIndex": str(fs_dir / "gzip.meta"), **lower}
        lowers.append(lower)
    return lowers


@pytest.mark.parametrize("gz", [True, False], ids=["tar.gz", "tar"])
@pytest.mark.parametrize("fs", ["erofs", "ext4"])
def test_s12_turbo_image_serves_every_file(
    proto: Protocol,
    served: tuple[Path, list[int]],
    images: dict[bool, list[TurboBuiltLayer]],
    tmp_path: Path,
    fs: str,
    gz: bool,
) -> None:
    """§12/§14: the top meta is the merged tree (whiteouts across layers applied), its data
    read from the originals; each layer's meta alone is the tree up to that layer."""
    lowers = unpacked_lowers(images[gz], tmp_path, fs)
    base_id = 500 + 10 * ["erofs", "ext4"].index(fs) + 5 * gz
    for depth in (3, 2, 1):
        result = serve(proto, served, base_id + depth, lowers[:depth], URL)
        assert result == (fs, MERGED[depth - 1])


def test_s12_meta_layers_hold_metadata_only(sim: RunningSimulator, tmp_path: Path) -> None:
    """§12: a meta layer is a small fraction of its original; the file data is not in it."""
    data = random.Random(7).randbytes(4 << 20)
    source = tmp_path / "big.tar"
    with tarfile.open(source, "w") as tar:
        info = tarfile.TarInfo("opt/blob.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (layer,) = build_turbo_layers([source], tmp_path / "store", fs_types=("erofs", "ext4"),
                                  size_gb=1)  # fmt: skip
    assert layer.size < layer.target_size // 20
    for name, size in layer.fs_metas.items():
        assert size < layer.target_size // 4, name
    with tarfile.open(layer.path) as meta_layer:
        for name in layer.fs_metas:
            member = meta_layer.extractfile(name)
            assert member is not None
            assert data[: 1 << 16] not in member.read()


def test_s12_meta_layer_members_and_annotations(
    images: dict[bool, list[TurboBuiltLayer]], sim: RunningSimulator, tmp_path: Path
) -> None:
    """§12: meta layers hold the fs metas, .turbo.ociv1 and (gzip originals) gzip.meta; their
    descriptors carry Go's annotations; the originals stay in the store under targetDigest."""
    for gz, layers in images.items():
        for layer in layers:
            names = unpack_meta_layer(Path(layer.path), tmp_path / layer.digest)
            gzip_meta = ["gzip.meta"] if gz else []
            assert sorted(names) == [".turbo.ociv1", "erofs.fs.meta", "ext4.fs.meta", *gzip_meta]
            assert turbo_annotations(layer) == {
                labels.BLOB_DIGEST: layer.digest,
                labels.BLOB_SIZE: str(layer.size),
                labels.TURBO_OCI_TARGET_DIGEST: layer.target_digest,
                labels.TURBO_OCI_TARGET_MEDIA_TYPE: layer.target_media_type,
                "containerd.io/snapshot/overlaybd/version": "0.1.0-turbo.ociv1",
            }
            assert (layer.target_media_type in labels.GZIP_LAYER_MEDIA_TYPES) is gz
            original = sim.blob_store / "sha256" / layer.target_digest.split(":")[1]
            assert "sha256:" + hashlib.sha256(original.read_bytes()).hexdigest() == (
                layer.target_digest
            )
            raw = original.read_bytes()
            assert raw[:2] == b"\x1f\x8b" if gz else raw[257:262] == b"ustar"


def test_s12_ext4_meta_layers_are_deterministic(tmp_path: Path) -> None:
    """Two builds of the same layers, seconds apart, give the same ext4 meta layers."""
    digests = []
    for attempt in range(2):
        if attempt:
            time.sleep(1.1)  # superblock times have a resolution of seconds
        layers = sources(tmp_path / f"src{attempt}")
        store = tmp_path / f"store{attempt}"
        built = build_turbo_layers(layers, store, fs_types=("ext4",), size_gb=1)
        digests.append([layer.digest for layer in built])
    assert digests[0] == digests[1]


def test_s12_mkimage_cli_writes_an_archive_with_the_originals(tmp_path: Path) -> None:
    """§12: ``mkimage --turbo-oci`` makes an OCI archive of meta layers that ships the originals."""
    store, archive = tmp_path / "store", tmp_path / "image.tar"
    done = mkimage("--store", store, "--turbo-oci", "erofs", "--uncompressed", "--size-gb", "1",
                   "--oci-tar", archive, *sources(tmp_path / "src"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    with tarfile.open(archive) as tar:
        index = json.loads(_member(tar, "index.json"))
        manifest = json.loads(_member(tar, "blobs/sha256/" + index["manifests"][0]["digest"][7:]))
        names = set(tar.getnames())
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer["digest"] for layer in result["layers"]
    ]
    for descriptor, layer in zip(manifest["layers"], result["layers"], strict=True):
        assert descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert descriptor["annotations"] == layer["annotations"]
        assert layer["target_media_type"] == "application/vnd.oci.image.layer.v1.tar"
        assert "blobs/sha256/" + layer["target_digest"].split(":")[1] in names
        assert layer["fs_metas"].keys() == {"erofs.fs.meta"}
    done = mkimage("--store", store, "--turbo-oci", "xfs", *sources(tmp_path / "src2"))
    assert done.returncode == 1 and "TurboOCI fs types are" in done.stderr


def mkimage(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return processes.run("python3", "-m", "tcmusim", "mkimage", *args, check=False,
                         cwd=PACKAGE_ROOT)  # fmt: skip


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None
    return member.read()


@pytest.fixture
def hidden_blobs(sim: RunningSimulator) -> Iterator[list[Path]]:
    """Blobs moved out of the store for a test, put back after it."""
    hidden: list[Path] = []
    yield hidden
    for blob in hidden:
        shutil.move(blob.with_name(blob.name + ".hidden"), blob)


def test_s12_an_older_layers_original_is_needed_for_its_files(
    sim: RunningSimulator,
    proto: Protocol,
    images: dict[bool, list[TurboBuiltLayer]],
    hidden_blobs: list[Path],
    tmp_path: Path,
) -> None:
    """§12: the top meta reads the base layer's files from the base original: without it, even
    the top lower alone cannot be opened."""
    layers = images[True]
    top = unpacked_lowers(layers, tmp_path, "erofs")[-1]
    base = sim.blob_store / "sha256" / layers[0].target_digest.split(":")[1]
    shutil.move(base, base.with_name(base.name + ".hidden"))
    hidden_blobs.append(base)
    config = tmp_path / "c" / "config.v1.json"
    write_config(config, lowers=[top], repo_blob_url=URL, result_file=config.parent / "result")
    assert open_failure(proto, config, 530) == (
        f"failed:failed to open remote file {URL}/{layers[0].target_digest}: "
        "No such file or directory"
    )


def test_s12_a_meta_opens_only_whole_and_with_its_target(
    proto: Protocol, images: dict[bool, list[TurboBuiltLayer]], tmp_path: Path
) -> None:
    """§12/§24: a damaged meta, or a meta configured without targetDigest, fails the open."""
    (lower,) = unpacked_lowers(images[False][:1], tmp_path, "ext4")
    meta = Path(str(lower["file"]))
    damaged = tmp_path / "damaged.fs.meta"
    damaged.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
    cases = [
        ({**lower, "file": str(damaged)},
         f"failed:failed to create overlaybd device: {damaged}: extent table outside the file "
         "(truncated layer?)"),
        ({"file": str(meta), "dir": lower["dir"]},
         f"failed:failed to create overlaybd device: {meta}: a TurboOCI fs meta, and the lower "
         "has no targetDigest"),
    ]  # fmt: skip
    config = tmp_path / "c" / "config.v1.json"
    for number, (bad, expected) in enumerate(cases):
        write_config(config, lowers=[bad], repo_blob_url=URL, result_file=config.parent / "result")
        assert open_failure(proto, config, 540 + number) == expected


def test_s12_a_hard_link_reads_its_targets_data_from_an_older_original(
    sim: RunningSimulator, proto: Protocol, served: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """§12: a hard link made in a later layer to an older layer's file reads that file's data."""
    base = layer_tar(tmp_path / "base.tar", {"opt/data": BIG})
    linked = tmp_path / "linked.tar"
    with tarfile.open(linked, "w") as tar:
        info = tarfile.TarInfo("opt/again")
        info.type, info.linkname = tarfile.LNKTYPE, "opt/data"
        tar.addfile(info)
    layers = build_turbo_layers([base, linked], sim.blob_store, size_gb=1)
    lowers = unpacked_lowers(layers, tmp_path, "erofs")
    assert serve(proto, served, 550, lowers, URL) == ("erofs", {"opt/data": BIG, "opt/again": BIG})


def test_s12_writable_layer_on_an_ext4_turbo_image(
    sim: RunningSimulator,
    proto: Protocol,
    served: tuple[Path, list[int]],
    images: dict[bool, list[TurboBuiltLayer]],
    tmp_path: Path,
) -> None:
    """§12: a container's writable layer on a TurboOCI ext4 image starts from the merged tree,
    data included, and keeps its writes across attaches."""
    lowers = unpacked_lowers(images[True], tmp_path, "ext4")
    data, index = tmp_path / "writable_data", tmp_path / "writable_index"
    must(sim.tools_dir, "overlaybd-create", data, index, "0", "-s")
    upper = {"index": str(index), "data": str(data)}
    config = write_config(tmp_path / "rw" / "config.v1.json", lowers=lowers, upper=upper,
                          repo_blob_url=URL)  # fmt: skip
    mountpoint = tmp_path / "rootfs"
    mountpoint.mkdir()
    disk = proto.attach(560, config)
    served[1].append(560)
    with mounted(disk.device, mountpoint):
        assert (mountpoint / "usr/lib/big").read_text() == BIG
        (mountpoint / "usr/lib/big").write_text("rewritten\n")
        (mountpoint / "new").write_text("new\n")
    proto.detach(560)
    served[1].remove(560)
    assert serve(proto, served, 561, lowers, URL, upper) == (
        "ext4",
        {**MERGED[2], "usr/lib/big": "rewritten\n", "new": "new\n"},
    )


def test_s13_conversion_on_a_turbo_oci_parent(
    sim: RunningSimulator,
    proto: Protocol,
    served: tuple[Path, list[int]],
    images: dict[bool, list[TurboBuiltLayer]],
    tmp_path: Path,
) -> None:
    """§13 on TurboOCI lowers: turboOCI-apply reads the parent's tree as overlaybd serves it."""
    lowers = unpacked_lowers(images[True], tmp_path, "erofs")
    snap = new_snap(tmp_path / "local", {"srv/data": "local\n", "usr/lib/.wh.big": ""})
    lowers.append(convert(sim.tools_dir, snap, "erofs", list(lowers), URL))
    expected = {**MERGED[2], "srv/data": "local\n"}
    del expected["usr/lib/big"]
    assert serve(proto, served, 570, lowers, URL) == ("erofs", expected)
