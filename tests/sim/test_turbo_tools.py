"""The tools of a local TurboOCI conversion (DESIGN-v1 §13) run step by step as obdsnap runs
them, the layer the simulator then serves, and each way the tools fail."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.block import read_header
from support.conversion import layer_tar, tree
from support.tool_faults import failing_tool

from tcmusim import layerfmt
from tcmusim.layerfmt import Magic
from tcmusim.mkimage import build_layers
from tcmusim.testing import RunningSimulator
from tcmusim.turbo_fs import fs_type_of, tar_meta_info

from .protocol import Protocol, write_config
from .test_devices import mounted
from .test_tools import run
from .turbo_steps import Snap, apply_args, convert, must, new_snap, prepare_temp

pytestmark = pytest.mark.root

GIB = 1 << 30
BASE = {"etc/os-release": "base\n", "etc/keep": "kept\n", "bin/tool": "v1\n", "var/cache/x": "x\n"}
MIDDLE = {
    "etc/.wh.keep": "",
    "bin/tool": "v2\n",
    "var/cache/.wh..wh..opq": "",
    "var/cache/y": "y\n",
}
TOP = {"srv/data": "top\n", "bin/.wh.tool": ""}


@pytest.fixture
def served(
    sim: RunningSimulator, proto: Protocol, tmp_path: Path
) -> Iterator[tuple[Path, list[int]]]:
    """Attached device ids, detached after the test."""
    attached: list[int] = []
    yield tmp_path, attached
    for device_id in attached:
        proto.detach(device_id)


def serve(
    proto: Protocol,
    served: tuple[Path, list[int]],
    device_id: int,
    lowers: list[dict[str, object]],
    repo_blob_url: str = "",
    upper: dict[str, str] | None = None,
) -> tuple[str | None, dict[str, str]]:
    """The fs type of the device the simulator makes of ``lowers`` (and ``upper``), its tree."""
    work, attached = served
    path = work / f"dev{device_id}" / "config.v1.json"
    config = write_config(path, lowers=lowers, upper=upper, repo_blob_url=repo_blob_url)
    disk = proto.attach(device_id, config)
    attached.append(device_id)
    fstype = fs_type_of(Path(disk.device))
    mountpoint = work / f"mnt{device_id}"
    mountpoint.mkdir()
    with mounted(disk.device, mountpoint, "ro"):
        return fstype, tree(mountpoint)


def test_s13_ext4_layer_without_parent_made_on_mkfs(
    sim: RunningSimulator, proto: Protocol, served: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """DESIGN-v1 §13 steps 2-6: no parent → --mkfs'd ext4; the ZFile commit serves the layer."""
    snap = new_snap(tmp_path / "1", BASE, {"etc/alias": "os-release"})
    lower = convert(sim.tools_dir, snap, "ext4", [])
    assert layerfmt.magic_of(snap.commit) is Magic.ZFILE
    header = layerfmt.open_committed(str(snap.commit)).header
    assert header.virtual_size == 256 * GIB and header.parent_uuid == ""
    assert snap.commit.stat().st_size < 8 << 20
    fstype, files = serve(proto, served, 301, [lower])
    assert fstype == "ext4"
    assert files == {**BASE, "etc/alias": "-> os-release"}
    # A container's writable layer on it (vsize 0: its lowers' size) starts from that tree.
    data, index = tmp_path / "writable_data", tmp_path / "writable_index"
    must(sim.tools_dir, "overlaybd-create", data, index, "0", "-s")
    upper = {"index": str(index), "data": str(data)}
    assert serve(proto, served, 304, [lower], upper=upper) == (fstype, files)


def test_s13_ext4_layers_stack_on_a_remote_parent_image(
    sim: RunningSimulator, proto: Protocol, served: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """DESIGN-v1 §13 steps 3-6: with parent lowers, the layer applies onto their merged tree."""
    source = tmp_path / "base"
    for name, text in BASE.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    (built,) = build_layers([source], sim.blob_store, size_gb=1)
    remote = {"digest": built.digest, "size": built.size}
    lowers: list[dict[str, object]] = [remote]
    url = "https://registry.invalid/v2/library/base/blobs"
    for index, files in enumerate((MIDDLE, TOP)):
        snap = new_snap(tmp_path / str(index), files)
        lowers.append(convert(sim.tools_dir, snap, "ext4", list(lowers), url))
    middle, top = (layerfmt.open_committed(str(lower["file"])) for lower in lowers[1:])
    assert (middle.header.parent_uuid, top.header.parent_uuid) == (built.uuid, middle.uuid)
    fstype, files = serve(proto, served, 302, lowers, url)
    assert fstype == "ext4"
    assert files == {"etc/os-release": "base\n", "var/cache/y": "y\n", "srv/data": "top\n"}


def test_s13_erofs_layers_stack(
    sim: RunningSimulator, proto: Protocol, served: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """DESIGN-v1 §13 steps 2-6 for EROFS: layer.tar itself, no --import, no --mkfs."""
    lowers: list[dict[str, object]] = []
    for index, files in enumerate((BASE, MIDDLE)):
        snap = new_snap(tmp_path / str(index), files)
        lowers.append(convert(sim.tools_dir, snap, "erofs", list(lowers)))
        assert not snap.meta.exists()
    fstype, files = serve(proto, served, 303, lowers)
    assert fstype == "erofs"
    assert files == {"etc/os-release": "base\n", "bin/tool": "v2\n", "var/cache/y": "y\n"}


def test_s13_export_writes_a_tar_meta_that_import_alone_needs(tmp_path: Path) -> None:
    """DESIGN-v1 §13 step 2: --export writes the tar meta; step 5 reads it, not layer.tar."""
    from tcmusim import tools

    bin_dir = tmp_path / "bin"
    tools.install(bin_dir)
    snap = new_snap(tmp_path / "1", BASE)
    meta = prepare_temp(bin_dir, snap, "ext4", [])
    assert tar_meta_info(meta) == {"format": "tcmusim-tar-meta", "version": 1, "members": 7}
    assert tar_meta_info(snap.layer_tar) is None
    gzipped = tmp_path / "layer.tar.gz"
    gzipped.write_bytes(gzip.compress(snap.layer_tar.read_bytes()))
    assert "objects count: 7" in must(
        bin_dir, "turboOCI-apply", gzipped, tmp_path / "gz.meta", "--export"
    )
    assert tar_meta_info(tmp_path / "gz.meta") == tar_meta_info(meta)
    snap.layer_tar.unlink()
    must(bin_dir, "turboOCI-apply", *apply_args(snap, meta, "ext4"))
    layer_tar(snap.layer_tar, {})
    done = run(bin_dir, "turboOCI-apply", *apply_args(snap, snap.layer_tar, "ext4"))
    assert done.returncode == 255 and "is not a tar meta" in done.stderr
    (tmp_path / "junk").write_text("not a tarball")
    done = run(bin_dir, "turboOCI-apply", tmp_path / "junk", tmp_path / "junk.meta", "--export")
    assert done.returncode == 255 and "failed to dump tar headers" in done.stderr
    assert not (tmp_path / "junk.meta").exists()
    done = run(bin_dir, "turboOCI-apply", snap.meta, tmp_path / "no/such/dir/meta", "--export")
    assert done.returncode == 255 and "failed to open file" in done.stderr


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tcmusim import tools

    directory = tmp_path_factory.mktemp("bin")
    tools.install(directory)
    return directory


def _break(snap: Snap, what: str, bin_dir: Path) -> list[str | Path]:
    """Arguments of a step-5 run that ``what`` makes fail."""
    meta = snap.meta
    args = apply_args(snap, meta, "ext4")
    config = json.loads(snap.config.read_text())
    if what == "missing input":
        args[0] = snap.root / "gone.tar"
    elif what == "missing service config":
        snap.service.unlink()
    elif what == "service config not JSON":
        snap.service.write_text("{")
    elif what == "missing image config":
        snap.config.unlink()
    elif what == "image config not JSON":
        snap.config.write_text("{")
    elif what == "no upper":
        snap.config.write_text(json.dumps({**config, "upper": {}}))
    elif what == "bad fstype":
        args[args.index("ext4")] = "xfs"
    elif what == "layer tarball with --import":
        args[0] = snap.layer_tar
    elif what == "missing lower":
        lowers = [{"file": str(snap.root / "gone.commit")}]
        snap.config.write_text(json.dumps({**config, "lowers": lowers}))
    elif what.startswith("remote lower"):
        url = "" if what.endswith("repoBlobUrl") else "https://registry.invalid/v2/x/blobs"
        remote = {"digest": "sha256:" + "0" * 64, "size": 4096}
        snap.config.write_text(json.dumps({**config, "lowers": [remote], "repoBlobUrl": url}))
    elif what == "missing target":
        (snap.temp / "fake_target").unlink()
    elif what == "upper not made with --turboOCI":
        for name in ("writable_data", "writable_index"):
            (snap.temp / name).unlink()
        data, index = snap.temp / "writable_data", snap.temp / "writable_index"
        must(bin_dir, "overlaybd-create", data, index, "1", "-s", "--mkfs")
    elif what == "no ext4 below":
        os.truncate(snap.temp / "writable_data", layerfmt.HEADER_SIZE)
        os.truncate(snap.temp / "writable_data", layerfmt.HEADER_SIZE + 256 * GIB)
    elif what == "erofs onto ext4":
        args[args.index("ext4")] = "erofs"
        snap.config.write_text(json.dumps({**config, "lowers": [{"file": str(snap.commit)}]}))
        must(bin_dir, "overlaybd-commit", "-z", "--turboOCI", *_pair(snap), snap.commit)
    return args


def _pair(snap: Snap) -> tuple[Path, Path]:
    return snap.temp / "writable_data", snap.temp / "writable_index"


def _header_bytes(path: Path) -> bytes:
    if not path.exists():
        return b""
    with open(path, "rb") as f:
        return f.read(layerfmt.HEADER_SIZE)


FAILURES = {
    "missing input": (2, "input_path: File does not exist"),
    "missing service config": (2, "--service_config_path: File does not exist"),
    "service config not JSON": (255, "failed to create image service"),
    "missing image config": (255, "can't found overlaybd config"),
    "image config not JSON": (255, "failed to create image file"),
    "no upper": (255, "has no upper (data and index) to write into"),
    "bad fstype": (255, "unsupported --fstype 'xfs'"),
    "layer tarball with --import": (255, "is not a tar meta"),
    "missing lower": (255, "failed to open layer 0"),
    "remote lower without a blob store": (255, "failed to open remote file"),
    "remote lower without a repoBlobUrl": (255, "empty repoBlobUrl"),
    "missing target": (255, "upper target"),
    "upper not made with --turboOCI": (255, "was not made with overlaybd-create --turboOCI"),
    "no ext4 below": (255, "new extfs failed, the image holds no filesystem, not ext4"),
    "erofs onto ext4": (255, "failed to extract: the lowers hold ext4, not erofs"),
}


@pytest.mark.parametrize("what", FAILURES)
def test_s13_apply_fails_cleanly_on_bad_input(bin_dir: Path, tmp_path: Path, what: str) -> None:
    """DESIGN-v1 §13 step 7: a failing turboOCI-apply exits non-zero, says why, writes nothing."""
    snap = new_snap(tmp_path / "1", BASE)
    prepare_temp(bin_dir, snap, "ext4", [])
    args = _break(snap, what, bin_dir)
    data = snap.temp / "writable_data"
    before = _header_bytes(data)
    done = run(bin_dir, "turboOCI-apply", *args)
    status, message = FAILURES[what]
    assert (done.returncode, done.stdout) == (status, ""), done.stderr
    assert message in done.stderr
    if before:
        assert _header_bytes(data) == before
        assert not read_header(data).initialized


def test_s13_create_turbo_oci_flags(bin_dir: Path, tmp_path: Path) -> None:
    """DESIGN-v1 §13 step 3: --turboOCI (or --fastoci) [--mkfs] makes a small, marked layer."""
    for flag in ("--turboOCI", "--fastoci"):
        data, index = tmp_path / f"{flag}.data", tmp_path / f"{flag}.index"
        must(bin_dir, "overlaybd-create", data, index, "256", "-s", flag, "--mkfs")
        assert read_header(data).extra == {"turbo_oci": True}
        image = tmp_path / f"{flag}.img"
        with open(data, "rb") as f:
            f.seek(layerfmt.HEADER_SIZE)
            image.write_bytes(f.read(1 << 20))
        assert fs_type_of(image) == "ext4"
        assert data.stat().st_blocks * 512 < 64 << 20
    done = run(bin_dir, "overlaybd-create", data, tmp_path / "other", "1", "--turboOCI")
    assert done.returncode == 255 and "File exists" in done.stderr


def test_s13_commit_turbo_oci_only_for_turbo_oci_layers(bin_dir: Path, tmp_path: Path) -> None:
    """DESIGN-v1 §13 step 6: -z --turboOCI commits a --turboOCI layer, and only that."""
    turbo = tmp_path / "t.data", tmp_path / "t.index"
    plain = tmp_path / "p.data", tmp_path / "p.index"
    must(bin_dir, "overlaybd-create", *turbo, "1", "-s", "--turboOCI")
    must(bin_dir, "overlaybd-create", *plain, "1", "-s")
    for pair, flags in ((plain, ["--turboOCI"]), (turbo, [])):
        done = run(bin_dir, "overlaybd-commit", *pair, tmp_path / "out", "-z", *flags)
        assert done.returncode == 255 and "possibly wrong file format" in done.stderr
        assert not (tmp_path / "out").exists()
    must(bin_dir, "overlaybd-commit", *turbo, tmp_path / "out", "-z", "--turboOCI")
    assert layerfmt.open_committed(str(tmp_path / "out")).header.extra == {"turbo_oci": True}


@pytest.mark.parametrize("after_real_run", [False, True])
def test_failing_tool_reports_and_is_put_back(
    bin_dir: Path, tmp_path: Path, after_real_run: bool
) -> None:
    """A tool swapped by failing_tool exits 1 with its message, and is the real one afterwards."""
    snap = new_snap(tmp_path / "1", BASE)
    with failing_tool(bin_dir, "turboOCI-apply", after_real_run=after_real_run, message="boom"):
        done = run(bin_dir, "turboOCI-apply", snap.layer_tar, snap.meta, "--export")
        assert (done.returncode, done.stderr) == (1, "boom\n")
        assert snap.meta.exists() is after_real_run
    assert not (bin_dir / "turboOCI-apply.real").exists()
    must(bin_dir, "turboOCI-apply", snap.layer_tar, snap.meta, "--export")
