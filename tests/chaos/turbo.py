"""The ``turbo-convert`` chaos variant: clients unpack layers as containerd's proxy differ
does (Prepare with ``convert2turbo-oci``, then ``<snap>/layer.tar``), and every Commit
converts the layer to TurboOCI (DESIGN-v1 §13) while obdsnap is SIGKILLed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from support.conversion import convert_labels, layer_tar

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.genproto.containerd.types import Mount

TURBO = "turbo-convert"
COMMITTED = api.Kind(3)
# What a conversion makes besides the layer file; none may stay with an active snapshot.
_CONVERSION_FILES = ("temp", "layer.metadata", "fs/overlaybd.commit", "block/config.v1.json")


def unpack_labels(key: str) -> dict[str, str]:
    """The unpack of the layer ``key`` commits as (``<key>-committed``)."""
    return convert_labels(f"{key}-committed")


def layer_tar_of(mounts: list[Mount]) -> Path:
    """Where the differ puts the layer: next to the ``fs/`` that Prepare binds."""
    return Path(mounts[0].source).parent / "layer.tar"


def write_layer(mounts: list[Mount], name: str) -> None:
    """Blocking: the layer holding the file ``name``, fsynced as the differ leaves it."""
    path = layer_tar(layer_tar_of(mounts), {name: name})
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def conversion_problem(snapshot_dir: Path, kind: api.Kind) -> str | None:
    """Blocking: a committed layer is converted (its layer file and config name it); an
    active one keeps nothing of a conversion a kill cut short."""
    if kind != COMMITTED:
        left = [name for name in _CONVERSION_FILES if (snapshot_dir / name).exists()]
        return f"an interrupted conversion left {left}" if left else None
    commit_file = snapshot_dir / "fs/overlaybd.commit"
    if not commit_file.exists():
        return "committed, but not converted: no fs/overlaybd.commit"
    try:
        lowers = json.loads((snapshot_dir / "block/config.v1.json").read_text())["lowers"]
    except (OSError, ValueError, KeyError) as exc:
        return f"committed, but its config cannot be read: {exc}"
    own = {"file": str(commit_file), "targetFile": str(snapshot_dir / "layer.tar")}
    return None if lowers and lowers[-1] == own else f"its config's top lower is not {own}"
