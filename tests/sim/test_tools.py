"""The layer format, the overlaybd-create/commit stand-ins and the control file (no root)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support import processes

from tcmusim import layerfmt, tools
from tcmusim.knobs import DeviceKnobs, Knobs
from tcmusim.layerfmt import Kind, LayerFormatError, Magic
from tcmusim.testing import only

GIB = 1 << 30


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bin")
    tools.install(directory)
    return directory


def run(bin_dir: Path, tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return processes.run(bin_dir / tool, *args, check=False)


def writable_pair(bin_dir: Path, root: Path, *extra: str) -> tuple[Path, Path]:
    data, index = root / "writable_data", root / "writable_index"
    done = run(bin_dir, "overlaybd-create", data, index, "1", *extra)
    assert done.returncode == 0, done.stderr
    return data, index


def test_create(bin_dir: Path, tmp_path: Path) -> None:
    data, index = writable_pair(bin_dir, tmp_path, "-s")
    assert layerfmt.magic_of(data) is Magic.LSMT
    assert layerfmt.magic_of(index) is Magic.LSMT
    with open(data, "rb") as f:
        header = layerfmt.Header.decode(f.read(layerfmt.HEADER_SIZE))
    assert header.kind is Kind.DATA and header.sparse and header.virtual_size == GIB
    assert data.stat().st_size == layerfmt.HEADER_SIZE + GIB
    assert data.stat().st_blocks * 512 < 1 << 20  # sparse
    again = run(bin_dir, "overlaybd-create", data, tmp_path / "other", "1")
    assert again.returncode == 255
    assert f"failed to open file '{data}', 17: File exists" in again.stderr
    assert run(bin_dir, "overlaybd-create", tmp_path / "d", tmp_path / "i", "-1").returncode != 0
    # vsize 0: a layer on lowers, sized by them when it is first opened.
    assert run(bin_dir, "overlaybd-create", tmp_path / "d", tmp_path / "i", "0").returncode == 0


def _fill(data: Path, chunks: dict[int, bytes]) -> None:
    fd = os.open(data, os.O_RDWR)
    try:
        for offset, chunk in chunks.items():
            os.pwrite(fd, chunk, layerfmt.HEADER_SIZE + offset)
    finally:
        os.close(fd)


CHUNKS = {0: b"A" * 4096, 5 * 4096: os.urandom(3 * 4096), GIB - 4096: b"Z" * 4096}


def _image_of(layer: layerfmt.CommittedLayer, out: Path) -> bytes:
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, layer.virtual_size)
        layer.unpack_into(fd, 0)
        return b"".join(os.pread(fd, len(chunk), offset) for offset, chunk in CHUNKS.items())
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("flags", "magic", "algorithm", "block_size"),
    [
        ((), Magic.LSMT, "", 0),
        (("-z",), Magic.ZFILE, "lz4", 4096),
        (("-z", "--bs", "64", "--algorithm", "zstd"), Magic.ZFILE, "zstd", 65536),
        (("-z", "-t"), Magic.ZFILE, "lz4", 4096),
    ],
)
def test_commit_round_trip(
    bin_dir: Path,
    tmp_path: Path,
    flags: tuple[str, ...],
    magic: Magic,
    algorithm: str,
    block_size: int,
) -> None:
    data, index = writable_pair(bin_dir, tmp_path)
    _fill(data, CHUNKS)
    out = tmp_path / "overlaybd.commit"
    done = run(bin_dir, "overlaybd-commit", *flags, data, index, out)
    assert done.returncode == 0, done.stderr
    assert "overlaybd-commit has committed files SUCCESSFULLY" in done.stdout
    layer = layerfmt.open_committed(str(out))
    assert layer.header.magic is magic
    assert (layer.header.algorithm, layer.header.block_size) == (algorithm, block_size)
    if "-t" in flags:
        assert layer.base == 512 and layerfmt.magic_of(out) is None
    else:
        assert layerfmt.magic_of(out) is magic
    assert out.stat().st_size < 64 * 4096
    assert _image_of(layer, tmp_path / "image") == b"".join(CHUNKS.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-z", "--algorithm", "gzip"), "invalid '--algorithm' parameters."),
        (("-z", "--bs", "3"), "invalid '--bs' parameters."),
        (("-z", "--bs", "128"), "invalid '--bs' parameters."),
        (("-z", "--bs", "4096"), "invalid '--bs' parameters."),  # KiB, like the real tool
    ],
)
def test_commit_rejects_bad_options(
    bin_dir: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    data, index = writable_pair(bin_dir, tmp_path)
    done = run(bin_dir, "overlaybd-commit", *args, data, index, tmp_path / "out")
    assert done.returncode == 255
    assert message in done.stderr


def test_commit_refuses_what_it_cannot_use(bin_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    data, index = writable_pair(bin_dir, tmp_path / "a")
    out = tmp_path / "out"
    out.write_text("already here")
    done = run(bin_dir, "overlaybd-commit", "-z", data, index, out)
    assert done.returncode == 255 and "File exists" in done.stderr
    assert run(bin_dir, "overlaybd-commit", "-z", "-f", data, index, out).returncode == 0
    (tmp_path / "b").mkdir()
    _, other_index = writable_pair(bin_dir, tmp_path / "b")
    done = run(bin_dir, "overlaybd-commit", data, other_index, tmp_path / "x")
    assert done.returncode == 255 and "possibly wrong file format" in done.stderr
    done = run(bin_dir, "overlaybd-commit", tmp_path / "missing", index, tmp_path / "y")
    assert done.returncode != 0 and "File does not exist" in done.stderr
    warned = run(bin_dir, "overlaybd-commit", "--bs", "8", data, index, tmp_path / "z")
    assert warned.returncode == 0 and "will be ignored without '-z'" in warned.stderr


def test_seal_in_place_then_commit_sealed(bin_dir: Path, tmp_path: Path) -> None:
    data, index = writable_pair(bin_dir, tmp_path)
    _fill(data, CHUNKS)
    inode = data.stat().st_ino
    done = run(bin_dir, "overlaybd-commit", "--seal", data, index)
    assert done.returncode == 0, done.stderr
    assert data.stat().st_ino == inode and layerfmt.magic_of(data) is Magic.LSMT
    sealed = layerfmt.open_committed(str(data))
    assert sealed.header.kind is Kind.SEALED
    assert _image_of(sealed, tmp_path / "sealed-image") == b"".join(CHUNKS.values())
    again = run(bin_dir, "overlaybd-commit", "--seal", data, index)
    assert again.returncode == 255 and "possibly wrong file format" in again.stderr
    for flags, base in (((), 0), (("-z",), 0), (("-z", "-t"), 512)):
        out = tmp_path / f"commit{len(flags)}"
        done = run(bin_dir, "overlaybd-commit", "--commit_sealed", data, out, *flags)
        assert done.returncode == 0, done.stderr
        layer = layerfmt.open_committed(str(out))
        assert layer.header.kind is Kind.COMMIT and layer.base == base
        assert layer.header.magic is (Magic.ZFILE if flags else Magic.LSMT)
        assert layer.uuid == sealed.uuid
        assert _image_of(layer, tmp_path / "image") == b"".join(CHUNKS.values())
    (tmp_path / "other").mkdir()
    unsealed, _ = writable_pair(bin_dir, tmp_path / "other")
    done = run(bin_dir, "overlaybd-commit", "--commit_sealed", unsealed, tmp_path / "never")
    assert done.returncode == 255 and "not a sealed layer" in done.stderr


def test_magic_detection(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(Magic.LSMT.raw[:10])
    assert layerfmt.magic_of(short) is None
    short.write_bytes(Magic.ZFILE.raw)
    assert layerfmt.magic_of(short) is Magic.ZFILE
    with pytest.raises(LayerFormatError):
        layerfmt.open_committed(str(short))


def test_control_file_knobs(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    knobs = Knobs(control, open_latency=0.25, appear_delay=0.5)
    assert knobs.for_device("dev_1") == DeviceKnobs(open_latency=0.25, appear_delay=0.5)
    control.write_text(
        json.dumps(
            {
                "fail_open": only("nope", "dev_1", 2),
                "eagain": [only(2, 3), {"value": 1}],
                "open_latency": 1.5,
                "never_appear": True,
                "slow_io_ms": only(10, "dev_3"),
            }
        )
    )
    one, two, three = (knobs.for_device(f"dev_{i}") for i in (1, 2, 3))
    assert (one.fail_open, two.fail_open, three.fail_open) == ("nope", "nope", None)
    assert (one.eagain, three.eagain) == (1, 2)
    assert one.open_latency == 1.5 and one.appear_delay == 0.5 and one.never_appear
    assert (one.slow_io_ms, three.slow_io_ms) == (0.0, 10.0)
    control.write_text('{"eagain": ')  # a half-written file keeps the knobs in force
    assert knobs.for_device("dev_1").eagain == 1
    control.write_text('{"eagain": -1}')
    assert knobs.for_device("dev_1").eagain == 1
    control.unlink()
    assert knobs.for_device("dev_1") == DeviceKnobs(open_latency=0.25, appear_delay=0.5)


def test_control_file_knobs_of_one_hba(tmp_path: Path) -> None:
    """A knob naming ``user_7/dev_1`` is that HBA's device 1 only; ``dev_1`` is every HBA's."""
    control = tmp_path / "control.json"
    knobs = Knobs(control)
    control.write_text(
        json.dumps(
            {
                "enable_errno": only(12, "user_7/dev_1"),
                "busy_after_appear": only(0.25, 1),
            }
        )
    )
    seventh, plain = knobs.for_device("user_7/dev_1"), knobs.for_device("user_999999999/dev_1")
    assert (seventh.enable_errno, plain.enable_errno) == (12, 0)
    assert seventh.busy_after_appear == plain.busy_after_appear == 0.25
    assert knobs.for_device("user_7/dev_2") == DeviceKnobs()
