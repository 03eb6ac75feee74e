"""OCI image layout tars (``ctr image import``) of the images mkimage builds.

Of an overlaybd local-format image, layer *k* is a tar holding the single file
``overlaybd.commit`` = blob *k*; :func:`write_oci_layout` writes any image.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
import tempfile
from pathlib import Path

from tcmusim.mkimage.layers import BuiltLayer
from tcmusim.mkimage.tree import EPOCH

CREATED = "2023-11-14T22:13:20Z"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


def tar_info(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _layer_tar(blob: Path, out: Path) -> tuple[str, int]:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar, open(blob, "rb") as f:
        tar.addfile(tar_info("overlaybd.commit", blob.stat().st_size), f)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return f"sha256:{digest}", out.stat().st_size


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def write_oci_archive(layers: list[BuiltLayer], out: Path, ref: str) -> str:
    """The OCI layout tar of an overlaybd local-format image; returns the manifest digest."""
    blobs: dict[str, bytes | Path] = {}
    descriptors: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tcmusim-oci-", dir=out.parent) as scratch:
        for index, layer in enumerate(layers):
            tar_path = Path(scratch) / f"layer{index}.tar"
            digest, size = _layer_tar(Path(layer.path), tar_path)
            layer.diff_id = digest
            blobs[digest] = tar_path
            descriptors.append({"mediaType": MEDIA_LAYER, "digest": digest, "size": size})
        diff_ids = [layer.diff_id for layer in layers]
        return write_oci_layout(out, ref, descriptors, diff_ids, blobs)


def write_oci_layout(
    out: Path,
    ref: str,
    descriptors: list[dict[str, object]],
    diff_ids: list[str],
    blobs: dict[str, bytes | Path],
) -> str:
    """An OCI layout tar of one image: its layers' ``descriptors``, a config, a manifest.

    ``blobs`` (digest → content or file) holds the layers and any other blob to ship.
    Returns the manifest digest.
    """
    blobs = dict(blobs)
    config = json.dumps(
        {
            "created": CREATED,
            "architecture": _architecture(),
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": CREATED, "created_by": "tcmusim mkimage"} for _ in diff_ids],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    blobs[config_digest] = config
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": descriptors,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    blobs[manifest_digest] = manifest
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index_json = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index_json),
        ):
            tar.addfile(tar_info(name, len(data)), io.BytesIO(data))
        for name in ("blobs", "blobs/sha256"):
            info = tar_info(name, 0, 0o755)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for digest in sorted(blobs):
            content = blobs[digest]
            name = "blobs/sha256/" + digest.split(":", 1)[1]
            if isinstance(content, Path):
                with open(content, "rb") as f:
                    tar.addfile(tar_info(name, content.stat().st_size), f)
            else:
                tar.addfile(tar_info(name, len(content)), io.BytesIO(content))
    return manifest_digest
