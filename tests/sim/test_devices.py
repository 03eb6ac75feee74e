"""Devices end to end: real mkfs, mount, writes, commits and stacked layers."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tcmusim import layerfmt
from tcmusim.layerfmt import Magic
from tcmusim.testing import RunningSimulator

from .protocol import (
    CMD_TIME_OUT,
    MKFS_EXT4,
    Attached,
    Protocol,
    Snapshot,
    must,
    write_attr,
    write_config,
)

pytestmark = pytest.mark.root


@contextmanager
def mounted(device: str, mountpoint: Path, *options: str) -> Iterator[Path]:
    must("mount", "-o", ",".join(options or ("discard",)), device, mountpoint)
    try:
        yield mountpoint
    finally:
        must("umount", mountpoint)


def assert_detached(sim: RunningSimulator, proto: Protocol, attached: Attached) -> None:
    assert proto.find_disk(attached.address) is None
    assert not (sim.sysfs / "block" / attached.name).exists()
    assert attached.device not in sim.loop_devices()


def test_writable_layers_stack(sim: RunningSimulator, proto: Protocol, tmp_path: Path) -> None:
    tools = sim.tools_dir
    # 1. A fresh writable device: mkfs, mount, write.
    parent = Snapshot(tmp_path / "1").make()
    must(tools / "overlaybd-create", parent.data, parent.index, "64", "-s")
    assert layerfmt.magic_of(parent.data) is Magic.LSMT
    write_config(parent.config, upper=parent.upper(), result_file=parent.result)
    disk = proto.attach(101, parent.config)
    assert parent.result.read_text() == "success"
    must(*MKFS_EXT4, disk.device)
    with mounted(disk.device, parent.mountpoint):
        (parent.mountpoint / "hello").write_text("from the parent\n")
        write_attr(sim.sysfs / "block" / disk.name / "device/timeout", CMD_TIME_OUT)
    proto.detach(101)
    assert_detached(sim, proto, disk)

    # The writable layer persists across attaches.
    disk = proto.attach(101, parent.config)
    with mounted(disk.device, parent.mountpoint):
        assert (parent.mountpoint / "hello").read_text() == "from the parent\n"
    proto.detach(101)

    # 2. Commit it, as obdsnap does after detaching.
    must(tools / "overlaybd-commit", "-z", parent.data, parent.index, parent.commit)
    assert layerfmt.magic_of(parent.commit) is Magic.ZFILE
    assert parent.commit.stat().st_size < 64 << 20  # packed, not the 64 GiB image

    # 3. A child stacked on the committed layer sees the parent's file and its own writes.
    child = Snapshot(tmp_path / "2").make()
    must(tools / "overlaybd-create", child.data, child.index, "64")
    lowers: list[dict[str, object]] = [{"dir": str(parent.fs)}]
    write_config(child.config, lowers=lowers, upper=child.upper(), result_file=child.result)
    disk = proto.attach(102, child.config)
    with mounted(disk.device, child.mountpoint):
        assert (child.mountpoint / "hello").read_text() == "from the parent\n"
        (child.mountpoint / "hello").write_text("changed by the child\n")
        (child.mountpoint / "child").write_text("child's own\n")
    proto.detach(102)
    assert_detached(sim, proto, disk)
    must(tools / "overlaybd-commit", "-z", child.data, child.index, child.commit, "--bs", "64",
         "--algorithm", "zstd")  # fmt: skip

    # 4. A read-only device over both committed layers shows the top one's view.
    view = Snapshot(tmp_path / "3").make()
    lowers = [{"dir": str(parent.fs)}, {"dir": str(child.fs)}]
    write_config(view.config, lowers=lowers, result_file=view.result)
    disk = proto.attach(103, view.config)
    assert (sim.sysfs / "block" / disk.name / "ro").read_text() == "1\n"
    with mounted(disk.device, view.mountpoint, "ro"):
        assert (view.mountpoint / "hello").read_text() == "changed by the child\n"
        assert (view.mountpoint / "child").read_text() == "child's own\n"
        with pytest.raises(OSError) as caught:
            (view.mountpoint / "new").write_text("x")
        assert caught.value.errno == errno.EROFS
    proto.detach(103)
    assert_detached(sim, proto, disk)

    # The parent alone still has its own content.
    write_config(view.config, lowers=[{"dir": str(parent.fs)}], result_file=view.result)
    disk = proto.attach(104, view.config)
    with mounted(disk.device, view.mountpoint, "ro"):
        assert (view.mountpoint / "hello").read_text() == "from the parent\n"
        assert not (view.mountpoint / "child").exists()
    proto.detach(104)


def test_lowers_out_of_order_are_refused(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path, image: dict[str, object]
) -> None:
    layers = _layers(image)
    view = Snapshot(tmp_path / "v").make()
    write_config(view.config, lowers=[layers[1], layers[0]], result_file=view.result,
                 repo_blob_url="https://registry.example/v2/x/blobs")  # fmt: skip
    proto.create(105, view.config)
    try:
        with pytest.raises(OSError) as caught:
            proto.enable(105)
        assert caught.value.errno == errno.EIO
        result = view.result.read_text()
        assert result.startswith("failed:failed to create overlaybd device: layer 0 (")
        assert result.endswith("but the lower below it is nothing")
    finally:
        proto.detach(105)


def _layers(image: dict[str, object]) -> list[dict[str, object]]:
    layers = image["layers"]
    assert isinstance(layers, list)
    return [{"digest": layer["digest"], "size": layer["size"]} for layer in layers]


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def _layer_tar(path: Path, entries: dict[str, str]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, content in entries.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def image(sim: RunningSimulator, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Three layers in the blob store and an OCI archive: dirs, a tarball with whiteouts."""
    work = tmp_path_factory.mktemp("image")
    base = _write_tree(
        work / "base",
        {"etc/base.txt": "base\n", "etc/doomed.txt": "doomed\n", "opt/old/a": "a\n",
         "opt/old/b": "b\n", "etc/version.txt": "v1\n"},
    )  # fmt: skip
    changes = _layer_tar(
        work / "changes.tar",
        {"etc/.wh.doomed.txt": "", "opt/old/.wh..wh..opq": "", "opt/old/c": "c\n",
         "etc/version.txt": "v2\n"},
    )  # fmt: skip
    top = _write_tree(work / "top", {"top.txt": "top\n"})
    os.chown(top / "top.txt", 1000, 1000)
    os.chmod(top / "top.txt", 0o640)
    os.symlink("etc/base.txt", top / "link")
    out = must(
        "python3", "-m", "tcmusim", "mkimage", "--store", sim.blob_store,
        "--oci-tar", work / "image.tar", "--ref", "docker.io/library/simtest:v1",
        "--work-dir", work, base, changes, top,
    )  # fmt: skip
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


def test_readonly_device_over_registry_blobs(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path, image: dict[str, object]
) -> None:
    view = Snapshot(tmp_path / "v").make()
    lowers = [{**layer, "dir": str(tmp_path / f"fs{i}")} for i, layer in enumerate(_layers(image))]
    write_config(view.config, lowers=lowers, result_file=view.result,
                 repo_blob_url="https://registry.example/v2/library/simtest/blobs")  # fmt: skip
    disk = proto.attach(106, view.config)
    assert view.result.read_text() == "success"
    root = view.mountpoint
    with mounted(disk.device, root, "ro"):
        assert (root / "etc/base.txt").read_text() == "base\n"
        assert not (root / "etc/doomed.txt").exists()
        assert sorted(os.listdir(root / "opt/old")) == ["c"]
        assert (root / "etc/version.txt").read_text() == "v2\n"
        st = (root / "top.txt").stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o640)
        assert os.readlink(root / "link") == "etc/base.txt"
    proto.detach(106)
    assert_detached(sim, proto, disk)

    # Only the first layer: no whiteouts applied yet.
    write_config(view.config, lowers=lowers[:1], result_file=view.result,
                 repo_blob_url="https://registry.example/v2/library/simtest/blobs")  # fmt: skip
    disk = proto.attach(107, view.config)
    with mounted(disk.device, root, "ro"):
        assert (root / "etc/doomed.txt").exists()
        assert sorted(os.listdir(root / "opt/old")) == ["a", "b"]
    proto.detach(107)


def test_oci_archive_holds_the_blobs(sim: RunningSimulator, image: dict[str, object]) -> None:
    with tarfile.open(str(image["oci_tar"])) as tar:
        names = set(tar.getnames())
        assert {"oci-layout", "index.json"} <= names
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest_name = "blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]
        annotations = index["manifests"][0]["annotations"]
        assert annotations["io.containerd.image.name"] == "docker.io/library/simtest:v1"
        manifest = json.load(tar.extractfile(manifest_name))  # type: ignore[arg-type]
        layers = _layers(image)
        assert len(manifest["layers"]) == len(layers)
        for descriptor, layer in zip(manifest["layers"], layers, strict=True):
            member = tar.extractfile("blobs/sha256/" + descriptor["digest"].split(":")[1])
            assert member is not None
            with tarfile.open(fileobj=io.BytesIO(member.read())) as layer_tar:
                assert layer_tar.getnames() == ["overlaybd.commit"]
                blob = layer_tar.extractfile("overlaybd.commit")
                assert blob is not None
                content = blob.read()
            assert len(content) == layer["size"]
            assert layerfmt.magic_of_bytes(content) is Magic.LSMT


def test_mkimage_is_deterministic(
    sim: RunningSimulator, tmp_path: Path, image: dict[str, object]
) -> None:
    tree = _write_tree(tmp_path / "t", {"a": "a\n", "d/b": "b\n"})
    for path in (tree / "a", tree / "d/b", tree / "d", tree):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    digests = []
    for attempt in range(2):
        os.chmod(tree / "a", 0o644)  # a new ctime, which mkfs -d would copy
        out = must("python3", "-m", "tcmusim", "mkimage", "--store", tmp_path / f"store{attempt}",
                   "--size-gb", "1", tree)  # fmt: skip
        digests.append([layer["digest"] for layer in json.loads(out)["layers"]])
    assert digests[0] == digests[1]


def test_open_failures_are_reported(sim: RunningSimulator, proto: Protocol, tmp_path: Path) -> None:
    snap = Snapshot(tmp_path / "s").make()
    url = "https://registry.example/v2/x/blobs"
    missing = "sha256:" + "0" * 64
    cases: list[tuple[dict[str, object], str]] = [
        ({"lowers": [{"file": "/nowhere/overlaybd.commit"}]},
         "failed:failed to open local file /nowhere/overlaybd.commit: No such file or directory"),
        ({"lowers": [{"digest": missing, "size": 10}], "repo_blob_url": url},
         f"failed:failed to open remote file {url}/{missing}: No such file or directory"),
        ({"lowers": [{"digest": missing, "size": 10}]}, "failed:empty repoBlobUrl"),
        ({"lowers": [{"file": str(snap.config)}]},
         f"failed:failed to create overlaybd device: {snap.config}: no overlaybd magic"),
        ({"upper": {"index": str(snap.index), "data": str(snap.data)}},
         f"failed:failed to open upper layer data {snap.data}: No such file or directory"),
        ({"lowers": [{"dir": str(tmp_path / "nowhere")}]},
         f"failed:failed to open layer 0: {tmp_path / 'nowhere'}: No such file or directory"),
        ({"lowers": [{"dir": str(snap.fs)}], "accelerationLayer": True, "recordTracePath": "/t"},
         "failed:Cannot record trace while acceleration layer exists"),
    ]  # fmt: skip
    for number, (fields, expected) in enumerate(cases):
        write_config(snap.config, result_file=snap.result, **fields)  # type: ignore[arg-type]
        proto.create(110 + number, snap.config)
        try:
            started = time.monotonic()
            with pytest.raises(OSError) as caught:
                proto.enable(110 + number)
            assert caught.value.errno == errno.EIO
            assert snap.result.read_text() == expected
            assert time.monotonic() - started < 2
        finally:
            proto.detach(110 + number)
    assert sim.loop_devices() == []


def test_acceleration_layer_and_trace(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path, image: dict[str, object]
) -> None:
    url = "https://registry.example/v2/library/simtest/blobs"
    accel = tmp_path / "accel"
    accel.mkdir()
    view = Snapshot(tmp_path / "v").make()
    lowers: list[dict[str, object]] = [*_layers(image), {"dir": str(accel)}]
    write_config(view.config, lowers=lowers, result_file=view.result, repo_blob_url=url,
                 accelerationLayer=True)  # fmt: skip
    proto.attach(120, view.config)
    assert view.result.read_text() == "success"
    proto.detach(120)

    trace = tmp_path / "trace"
    write_config(view.config, lowers=_layers(image), result_file=view.result, repo_blob_url=url,
                 recordTracePath=str(trace))  # fmt: skip
    proto.attach(121, view.config)
    assert json.loads(trace.read_text())["device"] == "dev_121"
    proto.detach(121)
