"""TurboOCI lowers (DESIGN-v1 §12, §24): the simulator serves the top lower's fs meta, and an
open fails as overlaybd-tcmu's does when a meta or an original blob is missing."""

from __future__ import annotations

import errno
import gzip
import shutil
from pathlib import Path

import pytest
from support.conversion import layer_tar

from tcmusim.mkimage import store_blob
from tcmusim.testing import RunningSimulator
from tcmusim.turbo_fs import make_fs

from .protocol import Protocol, write_config
from .test_turbo_tools import BASE, serve, served
from .turbo_steps import must

pytestmark = pytest.mark.root

__all__ = ["served"]

URL = "https://registry.invalid/v2/library/turbo/blobs"
MIB = 1 << 20


def original(sim: RunningSimulator, work: Path, files: dict[str, str], *, gz: bool) -> str:
    """An OCI layer blob (tar, or tar.gz with ``gz``) in the simulator's blob store."""
    work.mkdir(parents=True, exist_ok=True)
    tar = layer_tar(work / "layer.tar", files)
    if gz:
        tar.write_bytes(gzip.compress(tar.read_bytes(), mtime=0))
    digest, _ = store_blob(sim.blob_store, tar)
    return digest


def plain_meta(work: Path, files: dict[str, str], fs: str) -> Path:
    """A meta that is a whole fs image of ``files`` (data included)."""
    root = work / "tree"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    snap_fs = work / "fs"
    snap_fs.mkdir(parents=True, exist_ok=True)
    meta = snap_fs / f"{fs}.fs.meta"
    make_fs(fs, root, meta, 64 * MIB, "plain-" + fs)
    shutil.rmtree(root)
    return meta


def turbo_lower(meta: Path, digest: str, *, gz: bool) -> dict[str, object]:
    lower: dict[str, object] = {"file": str(meta), "targetDigest": digest, "dir": str(meta.parent)}
    if gz:
        (meta.parent / "gzip.meta").write_text("{}")
        lower["gzipIndex"] = str(meta.parent / "gzip.meta")
    return lower


@pytest.mark.parametrize("fs", ["erofs", "ext4"])
def test_s12_plain_fs_image_meta_serves_its_tree(
    sim: RunningSimulator, proto: Protocol, served: tuple[Path, list[int]], tmp_path: Path, fs: str
) -> None:
    """§12/§24: the device is the top meta's fs (its own superblock, so the §11 sniff sees it)."""
    lowers = []
    for number, (files, gz) in enumerate(((BASE, True), ({"srv/top": "t\n"}, False))):
        work = tmp_path / str(number)
        digest = original(sim, work, files, gz=gz)
        lowers.append(turbo_lower(plain_meta(work, files, fs), digest, gz=gz))
    device_id = 401 if fs == "erofs" else 403
    assert serve(proto, served, device_id, lowers, URL) == (fs, {"srv/top": "t\n"})
    # A container's writable layer (vsize 0: its lowers' size) starts from the same tree.
    data, index = tmp_path / "writable_data", tmp_path / "writable_index"
    must(sim.tools_dir, "overlaybd-create", data, index, "0", "-s")
    upper = {"index": str(index), "data": str(data)}
    assert serve(proto, served, device_id + 1, lowers, URL, upper) == (fs, {"srv/top": "t\n"})


def open_failure(proto: Protocol, config: Path, device_id: int) -> str:
    """The result file's text after the open of ``config`` failed with EIO."""
    proto.create(device_id, config)
    try:
        with pytest.raises(OSError) as caught:
            proto.enable(device_id)
        assert caught.value.errno == errno.EIO
    finally:
        proto.detach(device_id)
    return (config.parent / "result").read_text()


def test_s12_open_fails_without_meta_or_original(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path
) -> None:
    """§12/§24: a missing meta, original blob or gzip index, a gzipIndex that does not match the
    original, or a blob that is not its digest's fails the open, in the result file."""
    digest = original(sim, tmp_path / "o", BASE, gz=True)
    plain = original(sim, tmp_path / "p", BASE, gz=False)
    meta = plain_meta(tmp_path / "m", BASE, "erofs")
    good = turbo_lower(meta, digest, gz=True)
    missing = "sha256:" + "1" * 64
    gone = str(tmp_path / "gone/fs/erofs.fs.meta")
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / missing).write_text("not the blob of that digest")
    cases: list[tuple[list[dict[str, object]], str, str]] = [
        ([{**good, "file": gone}], URL,
         f"failed:failed to open local file {gone}: No such file or directory"),
        ([{**good, "targetDigest": missing}, good], URL,
         f"failed:failed to open remote file {URL}/{missing}: No such file or directory"),
        ([good, {**good, "targetDigest": missing}], URL,
         f"failed:failed to open remote file {URL}/{missing}: No such file or directory"),
        ([good], "", "failed:empty repoBlobUrl"),
        ([{**good, "gzipIndex": str(tmp_path / "gone.meta")}], URL,
         f"failed:failed to open gzip index {tmp_path / 'gone.meta'}: No such file or directory"),
        ([{key: value for key, value in good.items() if key != "gzipIndex"}], URL,
         f"failed:failed to open remote file {URL}/{digest}: gzip blob without gzipIndex"),
        ([{**good, "targetDigest": plain}], URL,
         f"failed:failed to open remote file {URL}/{plain}: gzipIndex given, not gzip"),
        ([{**good, "targetDigest": missing}], f"file://{registry}",
         f"failed:failed to open remote file file://{registry}/{missing}: digest mismatch"),
    ]  # fmt: skip
    config = tmp_path / "c" / "config.v1.json"
    for number, (lowers, url, expected) in enumerate(cases):
        write_config(config, lowers=lowers, repo_blob_url=url, result_file=config.parent / "result")
        assert open_failure(proto, config, 410 + number) == expected
    assert sim.loop_devices() == []


def test_s12_original_found_through_a_file_repo_blob_url(
    sim: RunningSimulator, proto: Protocol, served: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """§12: the original is fetched as repoBlobUrl/targetDigest, not only from the blob store."""
    registry = tmp_path / "registry"
    registry.mkdir()
    tar = layer_tar(tmp_path / "layer.tar", BASE)
    digest, _ = store_blob(tmp_path / "store", tar)
    shutil.move(tmp_path / "store/sha256" / digest.split(":")[1], registry / digest)
    meta = plain_meta(tmp_path / "m", BASE, "erofs")
    lowers = [turbo_lower(meta, digest, gz=False)]
    fstype, files = serve(proto, served, 420, lowers, f"file://{registry}")
    assert (fstype, files) == ("erofs", BASE)
