"""``block/config.v1.json``: what overlaybd-tcmu opens for a snapshot's device.

The JSON is byte-compatible with the Go snapshotter's (field names, order,
omitted empties), so devices configured by either open the same way.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from obdsnap import labels as L
from obdsnap.errors import InvalidArgument
from obdsnap.fsutil import write_file_durably

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]+)?$")
_REPOSITORY = re.compile(r"^[A-Za-z0-9._/-]*$")


@dataclass(frozen=True)
class Lower:
    """One layer of the device; the JSON keys in the Go snapshotter's order (DESIGN-v1 §3)."""

    gzip_index: str = ""  # TurboOCI: the gzip original's index, ``fs/gzip.meta`` (§12)
    file: str = ""
    digest: str = ""
    target_file: str = ""  # local conversion: the layer.tar the layer's data lives in (§13)
    target_digest: str = ""  # TurboOCI: the original OCI layer blob the data is read from
    size: int = 0
    dir: str = ""

    def to_json(self) -> dict[str, Any]:
        fields = (
            ("gzipIndex", self.gzip_index),
            ("file", self.file),
            ("digest", self.digest),
            ("targetFile", self.target_file),
            ("targetDigest", self.target_digest),
            ("size", self.size),
            ("dir", self.dir),
        )
        return {name: value for name, value in fields if value}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Lower:
        return cls(
            gzip_index=str(document.get("gzipIndex", "")),
            file=str(document.get("file", "")),
            digest=str(document.get("digest", "")),
            target_file=str(document.get("targetFile", "")),
            target_digest=str(document.get("targetDigest", "")),
            size=int(document.get("size", 0)),
            dir=str(document.get("dir", "")),
        )


@dataclass(frozen=True)
class Upper:
    index: str = ""
    data: str = ""
    target: str = ""  # local conversion: the fake target file (DESIGN-v1 §13 step 4)
    gzip_index: str = ""
    vsize: int = 0  # GB; only a writable layer without a parent has one (DESIGN-v1 §6)

    def to_json(self) -> dict[str, Any]:
        fields = (
            ("index", self.index),
            ("data", self.data),
            ("target", self.target),
            ("gzipIndex", self.gzip_index),
            ("vsize", self.vsize),
        )
        return {name: value for name, value in fields if value}


@dataclass(frozen=True)
class DeviceConfig:
    repo_blob_url: str = ""
    lowers: tuple[Lower, ...] = ()
    upper: Upper = field(default_factory=Upper)
    result_file: str = ""
    acceleration_layer: bool = False
    record_trace_path: str = ""

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "repoBlobUrl": self.repo_blob_url,
            "lowers": [lower.to_json() for lower in self.lowers],
            "upper": self.upper.to_json(),
            "resultFile": self.result_file,
        }
        if self.acceleration_layer:
            document["accelerationLayer"] = True
        if self.record_trace_path:
            document["recordTracePath"] = self.record_trace_path
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> DeviceConfig:
        upper = document.get("upper") or {}
        return cls(
            repo_blob_url=str(document.get("repoBlobUrl", "")),
            lowers=tuple(Lower.from_json(lower) for lower in document.get("lowers") or []),
            upper=Upper(
                index=str(upper.get("index", "")),
                data=str(upper.get("data", "")),
                target=str(upper.get("target", "")),
                gzip_index=str(upper.get("gzipIndex", "")),
                vsize=int(upper.get("vsize", 0)),
            ),
            result_file=str(document.get("resultFile", "")),
            acceleration_layer=bool(document.get("accelerationLayer", False)),
            record_trace_path=str(document.get("recordTracePath", "")),
        )

    def with_lower(self, lower: Lower) -> DeviceConfig:
        return replace(self, lowers=(*self.lowers, lower))


def encode(config: DeviceConfig) -> bytes:
    return json.dumps(config.to_json(), separators=(",", ":")).encode()


def read_config(path: Path) -> DeviceConfig:
    """Blocking: the config at ``path``."""
    return DeviceConfig.from_json(json.loads(path.read_bytes()))


def write_config(path: Path, config: DeviceConfig) -> bool:
    """Blocking: write durably and atomically with mode 0600, only if it changes; True when written.

    Durably: the rename is fsync'ed too, so a config the metadata relies on (a committed
    layer's) cannot fall back to the one before after a crash.
    """
    data = encode(config)
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_file_durably(path, data)
    return True


def image_ref(labels: Mapping[str, str]) -> str:
    """The image a layer comes from: ``image-ref`` preferred over ``cri.image-ref``."""
    return labels.get(L.IMAGE_REF) or labels.get(L.CRI_IMAGE_REF) or ""


def repo_blob_url(reference: str, insecure: Callable[[str], bool] = lambda host: False) -> str:
    """``https://<host>/v2/<repository>/blobs`` for an image reference, taken as given.

    Like the Go snapshotter (containerd's reference.Parse): no ``docker.io/library``
    normalisation, only the host ``docker.io`` becomes ``registry-1.docker.io``.
    ``insecure(host)``, asked with that host and its port: ``http://`` (DESIGN-v1 §18).
    """
    if not reference or "://" in reference:
        raise InvalidArgument(f"invalid image reference {reference!r}")
    host, _, path = reference.partition("/")
    if not _HOST.match(host):
        raise InvalidArgument(f"invalid image reference {reference!r}: bad host {host!r}")
    object_start = re.search(r"[:@]", path)
    repository = path[: object_start.start()] if object_start else path
    if not _REPOSITORY.match(repository):
        raise InvalidArgument(f"invalid image reference {reference!r}: bad repository")
    if not repository:
        repository = host  # the Go snapshotter's answer for a reference without a path
    if host == "docker.io":
        host = "registry-1.docker.io"
    scheme = "http://" if insecure(host) else "https://"
    return scheme + posixpath.normpath(posixpath.join(host, "v2", repository)) + "/blobs"
