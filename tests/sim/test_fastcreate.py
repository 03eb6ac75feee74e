"""The Go overlaybd-create writes what the Python stand-in writes, and says what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import processes

from tcmusim import fastcreate, layerfmt

UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def go_tool() -> Path:
    binary = fastcreate.binary()
    if binary is None:
        pytest.skip("no Go toolchain to build tcmusim's overlaybd-create")
    return binary


def run_go(binary: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, fastcreate.PYTHON_ENV: sys.executable, "PYTHONPATH": str(Path.cwd())}
    return processes.run(binary, *args, check=False, env=env)


def run_python(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return processes.run(
        sys.executable, "-m", "tcmusim.tools", "overlaybd-create", *args, check=False
    )


def header(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(layerfmt.HEADER_SIZE + 1)


def same_bytes_but_uuids(go: Path, python: Path) -> bool:
    """Equal headers once the random UUIDs are masked; the rest of a data file is a hole."""
    return UUID.sub(b"U", header(go)) == UUID.sub(b"U", header(python))


@pytest.mark.parametrize(
    "options", [[], ["-s"], ["-u", "parent-uuid"], ["-s", "-u", 'qu"ote\\ é \x7f 😀 \t']]
)
def test_the_same_files(go_tool: Path, tmp_path: Path, options: list[str]) -> None:
    go, python = tmp_path / "go", tmp_path / "python"
    for root in (go, python):
        root.mkdir()
    made_by_go = run_go(go_tool, *options, go / "data", go / "index", "3")
    made_by_python = run_python(*options, python / "data", python / "index", "3")
    assert (made_by_go.returncode, made_by_go.stdout, made_by_go.stderr) == (
        made_by_python.returncode,
        made_by_python.stdout,
        made_by_python.stderr,
    )
    for name in ("data", "index"):
        assert same_bytes_but_uuids(go / name, python / name)
        assert (go / name).stat().st_size == (python / name).stat().st_size
        assert (go / name).stat().st_blocks * 512 < 1 << 20
    assert UUID.findall(header(go / "data"))[0] in header(go / "index")  # its own data file


@pytest.mark.parametrize(
    "case", ["exists", "no-directory", "bad-vsize", "negative-vsize", "mkfs", "no-arguments"]
)
def test_the_same_answers(go_tool: Path, tmp_path: Path, case: str) -> None:
    (tmp_path / "taken").write_text("")
    cases: dict[str, list[str | Path]] = {
        "exists": [tmp_path / "taken", tmp_path / "i", "1"],
        "no-directory": [tmp_path / "none" / "d", tmp_path / "i", "1"],
        "bad-vsize": [tmp_path / "d", tmp_path / "i", "1x"],
        "negative-vsize": [tmp_path / "d", tmp_path / "i", "-1"],
        "mkfs": ["--mkfs", tmp_path / "d", tmp_path / "i", "1"],
        "no-arguments": [],
    }
    args = cases[case]
    by_go = run_go(go_tool, *args)
    for name in ("d", "i"):
        (tmp_path / name).unlink(missing_ok=True)
    by_python = run_python(*args)
    assert (by_go.returncode, by_go.stdout, by_go.stderr) == (
        by_python.returncode,
        by_python.stdout,
        by_python.stderr,
    )
