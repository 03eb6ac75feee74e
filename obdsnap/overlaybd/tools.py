"""overlaybd's command-line tools: make a writable layer, commit or seal it into a layer file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from obdsnap import labels as L
from obdsnap.commands import run_command
from obdsnap.errors import InvalidArgument

ZFILE_ALGORITHMS = ("lz4", "zstd")
# overlaybd-commit --bs takes KiB: 4, 8, 16, 32 or 64.
ZFILE_BLOCK_SIZES_KIB = (4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ZFileConfig:
    algorithm: str = ""
    block_size: int = 0

    def commit_arguments(self) -> list[str]:
        arguments: list[str] = []
        if self.block_size:
            arguments += ["--bs", str(self.block_size)]
        if self.algorithm:
            arguments += ["--algorithm", self.algorithm]
        return arguments


def parse_zfile_config(value: str) -> ZFileConfig:
    """The ``zfile-config`` label: ``{"algorithm": "lz4", "blockSize": 4096}``."""
    if not value:
        return ZFileConfig()
    try:
        document = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"zfile-config is not JSON: {exc.msg}") from exc
    if not isinstance(document, dict):
        raise InvalidArgument("zfile-config must be a JSON object")
    algorithm = document.get("algorithm", "")
    block_size = document.get("blockSize", 0)
    if not isinstance(algorithm, str) or (algorithm and algorithm not in ZFILE_ALGORITHMS):
        raise InvalidArgument(
            f"zfile-config algorithm must be one of {', '.join(ZFILE_ALGORITHMS)}"
        )
    valid_size = isinstance(block_size, int) and not isinstance(block_size, bool)
    if not valid_size or (block_size and block_size not in ZFILE_BLOCK_SIZES_KIB):
        sizes = ", ".join(map(str, ZFILE_BLOCK_SIZES_KIB))
        raise InvalidArgument(f"zfile-config blockSize (KiB) must be one of {sizes}")
    return ZFileConfig(algorithm, block_size)


def commit_zfile_config(labels: Mapping[str, str], seal: bool) -> ZFileConfig:
    """How a writable layer is compressed at Commit: sealing ignores ``zfile-config`` (§8)."""
    return ZFileConfig() if seal else parse_zfile_config(labels.get(L.ZFILE_CONFIG, ""))


class OverlaybdTools:
    def __init__(self, bin_dir: Path) -> None:
        self._bin_dir = bin_dir

    async def create_writable_layer(
        self, data: Path, index: Path, vsize_gb: int, *, sparse: bool
    ) -> None:
        """``vsize_gb`` 0: a layer on lowers, as large as they are (DESIGN-v1 §6 step 5)."""
        arguments = [str(data), str(index), str(vsize_gb)]
        if sparse:
            arguments.append("-s")
        await run_command(str(self._bin_dir / "overlaybd-create"), *arguments)

    async def commit_writable_layer(
        self, data: Path, index: Path, out: Path, zfile: ZFileConfig
    ) -> None:
        await run_command(
            str(self._bin_dir / "overlaybd-commit"),
            "-z",
            str(data),
            str(index),
            str(out),
            *zfile.commit_arguments(),
        )

    async def seal_writable_layer(self, data: Path, index: Path) -> None:
        """``overlaybd-commit --seal``: the data file becomes a read-only layer file in place."""
        await run_command(str(self._bin_dir / "overlaybd-commit"), "--seal", str(data), str(index))

    # ------------------------------------------------------------------ local TurboOCI (§13)

    async def create_turbo_layer(self, data: Path, index: Path, *, mkfs: bool) -> None:
        """The conversion's writable layer: 256 GB, sparse, ``--mkfs`` on a bottom ext4 layer."""
        arguments = [str(data), str(index), "256", "-s", "--turboOCI"]
        await run_command(
            str(self._bin_dir / "overlaybd-create"), *arguments, *(["--mkfs"] if mkfs else [])
        )

    async def export_tar_meta(self, layer_tar: Path, meta: Path) -> None:
        """``turboOCI-apply --export``: the tar meta of an uncompressed layer."""
        await run_command(
            str(self._bin_dir / "turboOCI-apply"), str(layer_tar), str(meta), "--export"
        )

    async def apply_turbo_layer(
        self, meta: Path, config: Path, service: Path, fs_type: str, *, import_meta: bool
    ) -> None:
        """``turboOCI-apply`` the tar meta (or, for EROFS, the tarball) onto ``config``'s upper."""
        await run_command(
            str(self._bin_dir / "turboOCI-apply"),
            str(meta),
            str(config),
            "--service_config_path",
            str(service),
            "--fstype",
            fs_type,
            *(["--import"] if import_meta else []),
        )

    async def commit_turbo_layer(self, data: Path, index: Path, out: Path) -> None:
        await run_command(
            str(self._bin_dir / "overlaybd-commit"),
            str(data),
            str(index),
            str(out),
            "-z",
            "--turboOCI",
        )
