"""obdsnap's container image archive as `make image` builds it, and a reader of it."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import build_image
import pytest
from debian_rootfs import REPO_ROOT, RootUnavailable, build_dir
from support.processes import run


def project_version() -> str:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert isinstance(version, str)
    return version


def archive_path() -> Path:
    return build_dir() / "image" / f"obdsnap-{project_version()}.oci.tar"


def make_image() -> Path:
    """Runs `make image`; skips where this machine cannot make the Debian root."""
    try:
        build_image.base_root()
    except RootUnavailable as missing:
        pytest.skip(str(missing))
    archive = archive_path()
    archive.unlink(missing_ok=True)
    done = run("make", "--no-print-directory", "-C", REPO_ROOT, "image", timeout=1800)
    assert archive.is_file(), f"make image made no {archive.name}:\n{done.stdout[-2000:]}"
    return archive


def existing_or_made_image() -> Path:
    archive = archive_path()
    return archive if archive.is_file() else make_image()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class OciArchive:
    """The files of an OCI image layout archive, by name."""

    files: dict[str, bytes]
    members: list[tarfile.TarInfo]

    @classmethod
    def read(cls, path: Path) -> OciArchive:
        files: dict[str, bytes] = {}
        with tarfile.open(path) as archive:
            members = archive.getmembers()
            for member in members:
                extracted = archive.extractfile(member) if member.isfile() else None
                if extracted is not None:
                    files[member.name] = extracted.read()
        return cls(files, members)

    def json(self, name: str) -> Any:
        return json.loads(self.files[name])

    def blob(self, descriptor: dict[str, Any]) -> bytes:
        """The blob a descriptor names, checked against its digest and size."""
        digest = descriptor["digest"]
        data = self.files[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
        assert sha256(data) == digest, f"blob {digest} does not hash to its name"
        assert len(data) == descriptor["size"], f"blob {digest}: size {len(data)}"
        return data

    def only_manifest(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The index's one manifest descriptor and the manifest."""
        (descriptor,) = self.json("index.json")["manifests"]
        return descriptor, json.loads(self.blob(descriptor))

    def layer_tar(self) -> bytes:
        """The one layer, uncompressed."""
        _, manifest = self.only_manifest()
        (layer,) = manifest["layers"]
        return gzip.decompress(self.blob(layer))
