"""The block-format test image: three busybox-based layer trees made into overlaybd layers.

``tcmusim mkimage`` turns the trees into overlaybd layer blobs (into the
simulator's blob store) and an OCI archive whose layer *k* is a tar holding
``overlaybd.commit`` = blob *k* (the local format, for ``ctr image import``).
``push_overlaybd_image`` pushes the blobs as a remote overlaybd image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from obdsnap.labels import BLOB_DIGEST, BLOB_SIZE, IMAGE_REF

from .containerd import run_command
from .ociimage import chain_ids
from .registry import MEDIA_LAYER_TAR, LocalRegistry, PushedImage, layer_descriptor, push_image

IMAGE_REFERENCE = "docker.io/library/obdsnap-e2e-block:v1"
REMOTE_REPOSITORY = "obdsnap-e2e/remote"
REMOTE_TAG = "v1"

APPLETS = ("sh", "awk", "cat", "echo", "grep", "ls", "printf", "stat", "test")
BASE_FILE = "etc/e2e/base.txt"
MIDDLE_FILE = "etc/e2e/middle.txt"
TOP_FILE = "etc/e2e/top.txt"
VERSION_FILE = "etc/e2e/version.txt"
DOOMED_FILE = "etc/e2e/doomed.txt"  # whited out by the middle layer
TOP_MODE, TOP_UID, TOP_GID = 0o640, 1000, 1000
WRITTEN_FILE = "written.txt"
WRITTEN_CONTENT = "written by the container"

# Runs in the container (busybox sh); prints one "name=value" line per fact.
READER_SCRIPT = f"""
fact() {{ printf '%s=%s\\n' "$1" "$2"; }}
fact uptime "$(cat /proc/uptime)"
fact base "$(cat /{BASE_FILE})"
fact middle "$(cat /{MIDDLE_FILE})"
fact top "$(cat /{TOP_FILE})"
fact top_mode_owner "$(stat -c '%a %u %g' /{TOP_FILE})"
fact version "$(cat /{VERSION_FILE})"
fact doomed "$(test -e /{DOOMED_FILE} && echo present || echo absent)"
fact whiteout_markers "$(ls -A /etc/e2e | grep -c '^\\.wh\\.')"
fact root_mount "$(awk '$5 == "/" {{ line = $0 }} END {{ print line }}' /proc/self/mountinfo)"
echo "{WRITTEN_CONTENT}" > /{WRITTEN_FILE}
fact written "$(cat /{WRITTEN_FILE})"
"""
EXPECTED_FACTS = {
    "base": "base layer",
    "middle": "middle layer",
    "top": "top layer",
    "top_mode_owner": f"{TOP_MODE:o} {TOP_UID} {TOP_GID}",
    "version": "v2",
    "doomed": "absent",
    "whiteout_markers": "0",
    "written": WRITTEN_CONTENT,
}


def write_layer_trees(work: Path, busybox: Path) -> list[Path]:
    """Three layer directories, base first: busybox; a whiteout and an overwrite; a file."""
    base, middle, top = (work / f"layer{index}" for index in range(3))
    for directory in ("bin", "dev", "proc", "sys", "run", "root", "etc/e2e"):
        (base / directory).mkdir(parents=True, exist_ok=True)
    (base / "tmp").mkdir()
    (base / "tmp").chmod(0o1777)
    shutil.copyfile(busybox, base / "bin/busybox")
    (base / "bin/busybox").chmod(0o755)
    for applet in APPLETS:
        (base / "bin" / applet).symlink_to("busybox")
    (base / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (base / "etc/group").write_text("root:x:0:\n")
    (base / BASE_FILE).write_text("base layer\n")
    (base / VERSION_FILE).write_text("v1\n")
    (base / DOOMED_FILE).write_text("whited out by the middle layer\n")

    (middle / "etc/e2e").mkdir(parents=True)
    (middle / MIDDLE_FILE).write_text("middle layer\n")
    (middle / VERSION_FILE).write_text("v2\n")
    (middle / "etc/e2e" / (".wh." + Path(DOOMED_FILE).name)).write_text("")

    (top / "etc/e2e").mkdir(parents=True)
    (top / TOP_FILE).write_text("top layer\n")
    os.chown(top / TOP_FILE, TOP_UID, TOP_GID)
    (top / TOP_FILE).chmod(TOP_MODE)
    return [base, middle, top]


@dataclass(frozen=True)
class BlobLayer:
    digest: str  # of the overlaybd layer file (the registry blob)
    size: int
    path: Path  # the blob in the simulator's blob store
    diff_id: str  # of the OCI layer tar of the local-format archive


@dataclass(frozen=True)
class BlockImage:
    reference: str
    archive: Path  # OCI archive: layer k is a tar holding overlaybd.commit = blob k
    layers: tuple[BlobLayer, ...]

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids([layer.diff_id for layer in self.layers])


def build_block_image(work: Path, store: Path, busybox: Path) -> BlockImage:
    """``tcmusim mkimage``: blobs into ``store`` (``sha256/<hex>``) and the OCI archive."""
    sources = write_layer_trees(work, busybox)
    archive = work / "image.tar"
    command = [sys.executable, "-m", "tcmusim", "mkimage", "--store", str(store)]
    command += ["--oci-tar", str(archive), "--ref", IMAGE_REFERENCE, "--work-dir", str(work)]
    done = run_command([*command, *map(str, sources)], timeout=120)
    layers = tuple(
        BlobLayer(entry["digest"], int(entry["size"]), Path(entry["path"]), entry["diff_id"])
        for entry in json.loads(done.stdout)["layers"]
    )
    return BlockImage(IMAGE_REFERENCE, archive, layers)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class RemoteImage(PushedImage):
    layers: tuple[BlobLayer, ...]

    @property
    def chain_ids(self) -> list[str]:
        # An overlaybd image's diff IDs are the digests of its (uncompressed) layer blobs.
        return chain_ids([layer.digest for layer in self.layers])


def push_overlaybd_image(
    registry: LocalRegistry, image: BlockImage, repository: str, tag: str
) -> RemoteImage:
    """The blobs as layers whose annotations make containerd's unpacker pass remote labels."""
    blobs = [layer.path.read_bytes() for layer in image.layers]
    pushed = push_annotated_layers(registry, repository, tag, blobs)
    return RemoteImage(pushed.reference, pushed.manifest_digest, pushed.config_digest, image.layers)


def push_downloadable_image(
    registry: LocalRegistry, image: BlockImage, repository: str, tag: str
) -> PushedImage:
    """The registry form of an overlaybd image: layer *k* a tar holding ``overlaybd.commit``.

    Its chain IDs are the block image's (the same layer tars as in its archive).
    """
    with tarfile.open(image.archive) as archive:
        blobs = [archive_blob(archive, layer.diff_id) for layer in image.layers]
    return push_annotated_layers(registry, repository, tag, blobs)


def layer_tar_sizes(image: BlockImage) -> dict[str, int]:
    """The sizes of the registry form's layers (the archive's layer tars), by digest."""
    with tarfile.open(image.archive) as archive:
        return {
            layer.diff_id: archive.getmember(_blob_name(layer.diff_id)).size
            for layer in image.layers
        }


def archive_blob(archive: tarfile.TarFile, digest: str) -> bytes:
    member = archive.extractfile(_blob_name(digest))
    assert member is not None, digest
    return member.read()


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def push_annotated_layers(
    registry: LocalRegistry, repository: str, tag: str, blobs: list[bytes]
) -> PushedImage:
    """Uncompressed layers annotated with their overlaybd blob digest, size and the image ref."""
    reference = registry.reference(repository, tag)
    descriptors = []
    for blob in blobs:
        digest, size = registry.push_blob(repository, blob)
        annotations = {BLOB_DIGEST: digest, BLOB_SIZE: str(size), IMAGE_REF: reference}
        descriptors.append(layer_descriptor(MEDIA_LAYER_TAR, digest, size, annotations))
    diff_ids = [descriptor["digest"] for descriptor in descriptors]
    return push_image(registry, repository, tag, descriptors, diff_ids)
