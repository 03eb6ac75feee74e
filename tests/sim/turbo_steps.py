"""A local TurboOCI conversion (DESIGN-v1 §13) driven step by step as obdsnap drives it:
the layer tarball, the tar meta, the writable layer, service.json and config.v1.json, then
turboOCI-apply and overlaybd-commit."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from support.conversion import layer_tar

from .protocol import write_config
from .test_tools import run


def must(tools: Path, tool: str, *args: str | Path) -> str:
    done = run(tools, tool, *args)
    assert done.returncode == 0, f"{tool}: {done.stderr}"
    return done.stdout


@dataclass
class Snap:
    """A snapshot directory of a local layer: ``layer.tar``, then what §13 makes of it."""

    root: Path

    @property
    def layer_tar(self) -> Path:
        return self.root / "layer.tar"

    @property
    def meta(self) -> Path:
        return self.root / "layer.metadata"

    @property
    def temp(self) -> Path:
        return self.root / "temp"

    @property
    def commit(self) -> Path:
        return self.root / "fs" / "overlaybd.commit"

    @property
    def config(self) -> Path:
        return self.temp / "config.v1.json"

    @property
    def service(self) -> Path:
        return self.temp / "service.json"

    def lower(self) -> dict[str, object]:
        return {"file": str(self.commit), "targetFile": str(self.layer_tar)}


def new_snap(root: Path, files: Mapping[str, str], links: Mapping[str, str] = {}) -> Snap:
    snap = Snap(root)
    (root / "fs").mkdir(parents=True)
    layer_tar(snap.layer_tar, files, links)
    return snap


def prepare_temp(
    tools: Path, snap: Snap, fs: str, lowers: list[dict[str, object]], repo_blob_url: str = ""
) -> Path:
    """§13 steps 2-4: the tar meta, the writable layer, service.json and config.v1.json."""
    meta = snap.layer_tar
    if fs != "erofs":
        must(tools, "turboOCI-apply", snap.layer_tar, snap.meta, "--export")
        meta = snap.meta
    snap.temp.mkdir(mode=0o755)
    mkfs = ["--mkfs"] if fs != "erofs" and not lowers else []
    data, index = snap.temp / "writable_data", snap.temp / "writable_index"
    must(tools, "overlaybd-create", data, index, "256", "-s", "--turboOCI", *mkfs)
    (snap.temp / "fake_target").touch()
    snap.service.write_text(
        json.dumps(
            {
                "registryFsVersion": "v2",
                "logPath": "",
                "logLevel": 1,
                "cacheConfig": {
                    "cacheType": "file",
                    "cacheDir": str(snap.temp / "cache"),
                    "cacheSizeGB": 4,
                },
                "gzipCacheConfig": {"enable": False},
                "credentialConfig": {"mode": "file", "path": ""},
                "ioEngine": 0,
                "download": {"enable": False},
                "enableAudit": False,
            }
        )
    )
    upper = {"index": str(index), "data": str(data), "target": str(snap.temp / "fake_target")}
    write_config(
        snap.config,
        lowers=lowers,
        upper=upper,
        result_file=snap.temp / "result",
        repo_blob_url=repo_blob_url,
    )
    return meta


def apply_args(snap: Snap, meta: Path, fs: str) -> list[str | Path]:
    imports = [] if fs == "erofs" else ["--import"]
    return [meta, snap.config, "--service_config_path", snap.service, "--fstype", fs, *imports]


def convert(
    tools: Path, snap: Snap, fs: str, lowers: list[dict[str, object]], repo_blob_url: str = ""
) -> dict[str, object]:
    """All of §13 on ``snap``; returns its lower."""
    meta = prepare_temp(tools, snap, fs, lowers, repo_blob_url)
    assert "turboOCI-apply done" in must(tools, "turboOCI-apply", *apply_args(snap, meta, fs))
    data, index = snap.temp / "writable_data", snap.temp / "writable_index"
    must(tools, "overlaybd-commit", data, index, snap.commit, "-z", "--turboOCI")
    return snap.lower()
