"""Local OCI → TurboOCI conversions (DESIGN-v1 §13) driven as containerd's proxy differ does:
an unpack Prepare with ``convert2turbo-oci``, the layer written as ``<snap>/layer.tar``,
then Commit; with the overlaybd tools watched, stalled or broken on the way."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from obdsnap import labels as L
from obdsnap.genproto.containerd.types import Mount
from support.block import Obd
from support.tool_faults import replaced_tool
from tcmusim.mkimage import EPOCH

CONVERSION_TOOLS = ("turboOCI-apply", "overlaybd-create", "overlaybd-commit")


def layer_tar(path: Path, files: Mapping[str, str], links: Mapping[str, str] = {}) -> Path:
    """A layer tarball: regular files (whiteouts are empty ones) and symlinks."""
    with tarfile.open(path, "w") as tar:
        for name in sorted({str(Path(n).parent) for n in files} - {"."}):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid = len(text.encode()), 0o640, EPOCH, 7
            tar.addfile(info, io.BytesIO(text.encode()))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, EPOCH
            tar.addfile(info)
    return path


def tree(root: Path) -> dict[str, str]:
    """Files (their text) and symlinks (``-> target``) under ``root``, but ``lost+found``."""
    found = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "lost+found"]
        for name in filenames + [d for d in dirnames if (Path(directory) / d).is_symlink()]:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            found[relative] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_text()
    return found


def convert_labels(name: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What containerd unpacks a layer for the proxy differ with."""
    return {L.TARGET_SNAPSHOT_REF: name, L.CONVERT_TO_TURBO_OCI: "true", **(extra or {})}


def unpack_key(name: str) -> str:
    return f"extract-{name} {name}"


@dataclass(frozen=True)
class LocalLayer:
    """An active unpack snapshot that holds (or is to hold) a ``layer.tar``."""

    obd: Obd
    name: str  # the name it commits as
    id: int
    mounts: list[Mount]

    @property
    def key(self) -> str:
        return unpack_key(self.name)

    @property
    def dir(self) -> Path:
        return self.obd.snapshot_dir(self.id)

    @property
    def layer_tar(self) -> Path:
        return self.dir / "layer.tar"

    @property
    def meta(self) -> Path:
        return self.dir / "layer.metadata"

    @property
    def temp(self) -> Path:
        return self.dir / "temp"

    @property
    def commit_file(self) -> Path:
        return self.obd.fs(self.id) / "overlaybd.commit"

    def lower(self) -> dict[str, str]:
        """Its lower once converted (DESIGN-v1 §13 step 7)."""
        return {"file": str(self.commit_file), "targetFile": str(self.layer_tar)}

    def leftovers(self) -> list[Path]:
        """What a conversion that did not commit may not leave."""
        made = [self.temp, self.meta, self.commit_file, self.obd.config_path(self.id)]
        return [path for path in made if path.exists()]

    async def commit(self, labels: Mapping[str, str] | None = None) -> None:
        await self.obd.commit(self.name, self.key, convert_labels(self.name, labels))


async def unpack_layer(
    obd: Obd,
    name: str,
    parent: str = "",
    files: Mapping[str, str] | None = None,
    links: Mapping[str, str] = {},
) -> LocalLayer:
    """Prepare ``name``'s unpack, then write its ``layer.tar`` (unless ``files`` is None)."""
    mounts = await obd.prepare(unpack_key(name), parent, convert_labels(name))
    layer = LocalLayer(obd, name, obd.id_of(mounts[0].source), mounts)
    assert mounts == [Mount(type="bind", source=str(obd.fs(layer.id)), options=["rw", "rbind"])]
    if files is not None:
        layer_tar(layer.layer_tar, files, links)
    return layer


async def converted_layer(
    obd: Obd,
    name: str,
    parent: str = "",
    files: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> LocalLayer:
    """``unpack_layer`` with ``files`` ({name: name} by default), committed."""
    layer = await unpack_layer(obd, name, parent, {name: f"{name}\n"} if files is None else files)
    await layer.commit(labels)
    return layer


@contextlib.contextmanager
def logged_tools(obd: Obd, log: Path) -> Iterator[Path]:
    """Every run of a conversion tool appends its name and arguments to ``log``."""
    with contextlib.ExitStack() as stack:
        for name in CONVERSION_TOOLS:
            body = f'echo {shlex.quote(name)} "$*" >> {shlex.quote(str(log))}\nexec "$REAL" "$@"\n'
            stack.enter_context(replaced_tool(obd.sim.tools_dir, name, body))
        yield log


def tool_runs(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def when_run_with(argument: str, then: str) -> str:
    """A tool script's body: ``then`` when the arguments include ``argument``, else the tool."""
    pattern = shlex.quote(f" {argument} ")
    return f'case " $* " in *{pattern}*)\n{then}\n;;\nesac\nexec "$REAL" "$@"\n'


def stalled_tool(
    obd: Obd, name: str, started: Path, argument: str
) -> contextlib.AbstractContextManager[Path]:
    """``name`` run with ``argument`` touches ``started``, then waits for the test to kill it."""
    stall = f"touch {shlex.quote(str(started))}\nsleep 60"
    return replaced_tool(obd.sim.tools_dir, name, when_run_with(argument, stall))


def broken_tool(
    obd: Obd, name: str, argument: str, message: str, *, after_real_run: bool
) -> contextlib.AbstractContextManager[Path]:
    """``name`` run with ``argument`` fails with ``message``, after a real run if asked."""
    real_run = '"$REAL" "$@" >/dev/null 2>&1\n' if after_real_run else ""
    fail = f"{real_run}echo {shlex.quote(message)} >&2\nexit 1"
    return replaced_tool(obd.sim.tools_dir, name, when_run_with(argument, fail))
