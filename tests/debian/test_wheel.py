"""The wheel that `pip install .` installs: obdsnap alone, and nothing it cannot import.

The wheel is built, offline, from every top-level package of the checkout, as pip
would find them; what it holds is read from the archive itself.
"""

from __future__ import annotations

import ast
import configparser
import email.parser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?[^;]*(?:;(.*))?")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for package in sorted(REPO_ROOT.glob("*/__init__.py")):
        shutil.copytree(
            package.parent,
            source / package.parent.name,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(out)),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [built] = out.glob("obdsnap-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def dist_info(archive: zipfile.ZipFile, name: str) -> str:
    [member] = [m for m in archive.namelist() if m.endswith(f".dist-info/{name}")]
    return archive.read(member).decode()


def modules(archive: zipfile.ZipFile) -> set[str]:
    return {
        ".".join(PurePosixPath(name).with_suffix("").parts).removesuffix(".__init__")
        for name in archive.namelist()
        if name.endswith(".py")
    }


def runtime_distributions(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, transitively, as installed here.

    Extras are followed where a requirement asks for them; other markers are taken as
    true, which can only allow more.
    """
    wanted = [parsed for parsed in map(_parse, requirements) if parsed[2] is None]
    found: set[str] = set()
    while wanted:
        name, extras, _ = wanted.pop()
        key = _normalized(name)
        if key in found:
            continue
        found.add(key)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed: its marker excludes this Python (async-timeout)
        for line in requirements:
            child, child_extras, extra = _parse(line)
            if extra is None or extra in extras:
                wanted.append((child, child_extras, None))
    return found


def _parse(line: str) -> tuple[str, set[str], str | None]:
    """A requirement's name, its extras and the extra it is for (None: always)."""
    match = _REQUIREMENT.match(line)
    assert match is not None, line
    name, extras, marker = match.groups()
    extra = _EXTRA.search(marker or "")
    return (
        name,
        {e.strip() for e in (extras or "").split(",") if e.strip()},
        (extra.group(1) if extra else None),
    )


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_levels(source: str) -> set[str]:
    """Top-level names of the absolute imports that run when the module is imported."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # only the type checker reads these
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_wheel_holds_obdsnap_alone(wheel: zipfile.ZipFile) -> None:
    top_levels = {name.split("/")[0] for name in wheel.namelist()}
    assert {name for name in top_levels if not name.endswith(".dist-info")} == {"obdsnap"}
    assert "mfusepy" not in dist_info(wheel, "METADATA").split("Provides-Extra")[0]


def test_every_command_of_the_wheel_is_in_it(wheel: zipfile.ZipFile) -> None:
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dist_info(wheel, "entry_points.txt"))
    commands = dict(entry_points["console_scripts"])
    assert commands == {"obdsnap": "obdsnap.cli:main"}
    assert {target.split(":")[0] for target in commands.values()} <= modules(wheel)


def test_the_wheel_imports_only_what_it_requires(wheel: zipfile.ZipFile) -> None:
    metadata = email.parser.Parser().parsestr(dist_info(wheel, "METADATA"))
    allowed = runtime_distributions(metadata.get_all("Requires-Dist") or [])
    providers = importlib.metadata.packages_distributions()
    own = {name.split(".")[0] for name in modules(wheel)}
    unrequired: dict[str, set[str]] = {}
    for name in sorted(wheel.namelist()):
        if not name.endswith(".py"):
            continue
        for top in imported_top_levels(wheel.read(name).decode()):
            if top in sys.stdlib_module_names or top in own or top == "__future__":
                continue
            distributions = {_normalized(d) for d in providers.get(top, [])}
            if not distributions & allowed:
                unrequired.setdefault(name, set()).add(top)
    assert unrequired == {}, f"modules that import what the wheel does not require: {unrequired}"
