"""Offline, deterministic OCI image archives for end-to-end tests.

Builds an OCI image-layout tar (``oci-layout``, ``index.json``,
``blobs/sha256/...``) that ``ctr image import`` accepts, from Debian's static
busybox and nothing else (stdlib only, no network). Layers, bottom to top:

1. base: ``/bin/busybox`` with applet symlinks, ``/etc/passwd``, ``/etc/group``,
   ``/etc/e2e/{base,version,doomed}.txt``, ``/opt/olddir/{a,b,sub/deep.txt}``;
2. fillers (``layers - 3`` of them): ``/layers/NNN.txt`` and ``/layers/last.txt``;
3. changes: whiteout of ``/etc/e2e/doomed.txt``, opaque ``/opt/olddir`` with a
   new entry ``c``, ``/etc/e2e/version.txt`` rewritten to ``v2``;
4. top: ``/etc/e2e/top.txt`` (0640, uid/gid 1000) and the executable
   ``/usr/local/bin/e2e-hello``.

The same busybox binary and arguments always give the same bytes.

Command line::

    python3 tests/e2e/ociimage.py -o image.tar [--layers N] [--name REF] [--info FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import platform
import struct
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

DEFAULT_REFERENCE = "docker.io/library/obdsnap-e2e:latest"
MIN_LAYERS = 3

# Fixed timestamps: the archive must not depend on when it was built.
EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = (
    "[", "cat", "chmod", "cp", "cut", "echo", "env", "false", "grep", "head", "id",
    "ln", "ls", "mkdir", "mv", "printf", "readlink", "rm", "rmdir", "sh", "sha256sum",
    "sleep", "sort", "stat", "sync", "tail", "tee", "test", "touch", "tr", "true",
    "uname", "wc",
)  # fmt: skip

# What the image contains, for the tests' assertions (paths without leading /).
TOP_FILE = "etc/e2e/top.txt"
TOP_CONTENT = b"hello from the top layer\n"
TOP_MODE = 0o640
TOP_UID = 1000
TOP_GID = 1000
TOP_EXECUTABLE = "usr/local/bin/e2e-hello"
TOP_EXECUTABLE_OUTPUT = "e2e-hello ran"
BASE_FILE = "etc/e2e/base.txt"
BASE_CONTENT = b"from the base layer\n"
VERSION_FILE = "etc/e2e/version.txt"
VERSION_CONTENT = b"v2\n"
WHITED_OUT_FILE = "etc/e2e/doomed.txt"
OPAQUE_DIR = "opt/olddir"
OPAQUE_DIR_ENTRIES = ("c",)
FILLER_DIR = "layers"

_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_PT_INTERP = 3

MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def host_goarch() -> str:
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


def is_static_elf(data: bytes) -> bool:
    """An ELF executable without a PT_INTERP program header needs no loader."""
    if data[:4] != b"\x7fELF":
        return False
    is_64bit = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    if is_64bit:
        (ph_offset,) = struct.unpack_from(order + "Q", data, 0x20)
        ph_entry_size, ph_count = struct.unpack_from(order + "HH", data, 0x36)
    else:
        (ph_offset,) = struct.unpack_from(order + "I", data, 0x1C)
        ph_entry_size, ph_count = struct.unpack_from(order + "HH", data, 0x2A)
    for index in range(ph_count):
        (ph_type,) = struct.unpack_from(order + "I", data, ph_offset + index * ph_entry_size)
        if ph_type == _PT_INTERP:
            return False
    return True


def find_static_busybox() -> Path | None:
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and is_static_elf(path.read_bytes()):
            return path
    return None


@dataclass(frozen=True)
class _Entry:
    kind: Literal["dir", "file", "symlink"]
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    target: str = ""


@dataclass
class LayerTree:
    """The entries of one layer tar; parents are added as 0755 directories."""

    description: str
    entries: dict[str, _Entry] = field(default_factory=dict)

    def add_dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._add_parents(path)
        self.entries[path] = _Entry("dir", mode, uid, gid)

    def add_file(
        self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> None:
        self._add_parents(path)
        self.entries[path] = _Entry("file", mode, uid, gid, data=data)

    def add_symlink(self, path: str, target: str) -> None:
        self._add_parents(path)
        self.entries[path] = _Entry("symlink", 0o777, target=target)

    def whiteout(self, path: str) -> None:
        """Deletes a file of a lower layer (OCI whiteout ``.wh.<name>``)."""
        posix = PurePosixPath(path)
        self.add_file(str(posix.parent / (".wh." + posix.name)), b"")

    def make_opaque(self, directory: str) -> None:
        """Hides everything lower layers put into directory."""
        self.add_dir(directory)
        self.add_file(f"{directory}/.wh..wh..opq", b"")

    def _add_parents(self, path: str) -> None:
        for parent in reversed(PurePosixPath(path).parents):
            name = str(parent)
            if name != "." and name not in self.entries:
                self.entries[name] = _Entry("dir")

    def tar_bytes(self) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for path in sorted(self.entries):
                entry = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime = EPOCH
                info.mode = entry.mode
                info.uid, info.gid = entry.uid, entry.gid
                info.uname = info.gname = ""
                if entry.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    archive.addfile(info)
                elif entry.kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = entry.target
                    archive.addfile(info)
                else:
                    info.size = len(entry.data)
                    archive.addfile(info, io.BytesIO(entry.data))
        return buffer.getvalue()


def image_layers(busybox: bytes, layer_count: int) -> list[LayerTree]:
    if layer_count < MIN_LAYERS:
        raise ValueError(f"an image needs at least {MIN_LAYERS} layers, not {layer_count}")

    base = LayerTree("base: static busybox, /etc, /opt/olddir")
    for directory in ("dev", "proc", "sys", "run", "var", "usr/local/bin", "mnt"):
        base.add_dir(directory)
    base.add_dir("tmp", 0o1777)
    base.add_dir("root", 0o700)
    base.add_file("bin/busybox", busybox, 0o755)
    for applet in APPLETS:
        base.add_symlink(f"bin/{applet}", "busybox")
    base.add_file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n"
        b"e2e:x:1000:1000:e2e:/tmp:/bin/sh\n"
        b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    base.add_file("etc/group", b"root:x:0:\ne2e:x:1000:\nnogroup:x:65534:\n")
    base.add_file(BASE_FILE, BASE_CONTENT)
    base.add_file(VERSION_FILE, b"v1\n")
    base.add_file(WHITED_OUT_FILE, b"a later layer deletes this file\n")
    base.add_file(f"{OPAQUE_DIR}/a", b"hidden by the opaque whiteout\n")
    base.add_file(f"{OPAQUE_DIR}/b", b"hidden by the opaque whiteout\n")
    base.add_file(f"{OPAQUE_DIR}/sub/deep.txt", b"hidden by the opaque whiteout\n")
    layers = [base]

    for number in range(1, layer_count - MIN_LAYERS + 1):
        filler = LayerTree(f"filler {number:03d}")
        filler.add_file(f"{FILLER_DIR}/{number:03d}.txt", f"filler layer {number:03d}\n".encode())
        filler.add_file(f"{FILLER_DIR}/last.txt", f"{number:03d}\n".encode())
        layers.append(filler)

    changes = LayerTree("changes: whiteout, opaque directory, overwrite")
    changes.whiteout(WHITED_OUT_FILE)
    changes.make_opaque(OPAQUE_DIR)
    for entry in OPAQUE_DIR_ENTRIES:
        changes.add_file(f"{OPAQUE_DIR}/{entry}", b"added with the opaque whiteout\n")
    changes.add_file(VERSION_FILE, VERSION_CONTENT)
    layers.append(changes)

    top = LayerTree("top: owned file and an executable")
    top.add_file(TOP_FILE, TOP_CONTENT, TOP_MODE, TOP_UID, TOP_GID)
    top.add_file(TOP_EXECUTABLE, f"#!/bin/sh\necho '{TOP_EXECUTABLE_OUTPUT}'\n".encode(), 0o755)
    layers.append(top)
    return layers


@dataclass(frozen=True)
class LayerInfo:
    description: str
    digest: str
    size: int
    diff_id: str
    chain_id: str


@dataclass(frozen=True)
class ImageInfo:
    reference: str
    archive: Path
    architecture: str
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerInfo, ...]

    @property
    def chain_ids(self) -> list[str]:
        return [layer.chain_id for layer in self.layers]

    @property
    def top_chain_id(self) -> str:
        return self.layers[-1].chain_id

    @property
    def filler_count(self) -> int:
        return len(self.layers) - MIN_LAYERS

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["archive"] = str(self.archive)
        data["chain_ids"] = self.chain_ids
        return data


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI image spec: ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(n))."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else sha256_digest(f"{chain[-1]} {diff_id}".encode()))
    return chain


def _split_reference(reference: str) -> tuple[str, str]:
    """Returns (full reference with a tag, tag); defaults the tag to latest."""
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:
        return f"{reference}:latest", "latest"
    return reference, tag


def _add_to_tar(archive: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = EPOCH
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        archive.addfile(info)
    else:
        info.mode = 0o644
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def build_image(
    output: Path,
    layer_count: int = MIN_LAYERS,
    reference: str = DEFAULT_REFERENCE,
    busybox: Path | None = None,
    architecture: str | None = None,
) -> ImageInfo:
    """Writes the image archive to output and returns what it contains."""
    busybox = busybox or find_static_busybox()
    if busybox is None:
        raise FileNotFoundError(
            "no static busybox in " + ", ".join(BUSYBOX_CANDIDATES) + " (install busybox-static)"
        )
    busybox_bytes = busybox.read_bytes()
    if not is_static_elf(busybox_bytes):
        raise ValueError(f"{busybox} is dynamically linked; containers need a static busybox")
    architecture = architecture or host_goarch()
    reference, tag = _split_reference(reference)

    blobs: dict[str, bytes] = {}
    trees = image_layers(busybox_bytes, layer_count)
    diff_ids: list[str] = []
    compressed: list[tuple[str, int]] = []
    for tree in trees:
        raw = tree.tar_bytes()
        blob = gzip.compress(raw, compresslevel=6, mtime=0)
        digest = sha256_digest(blob)
        blobs[digest] = blob
        diff_ids.append(sha256_digest(raw))
        compressed.append((digest, len(blob)))
    layers = tuple(
        LayerInfo(tree.description, digest, size, diff_id, chain_id)
        for tree, (digest, size), diff_id, chain_id in zip(
            trees, compressed, diff_ids, chain_ids(diff_ids), strict=True
        )
    )

    config = canonical_json(
        {
            "created": CREATED,
            "architecture": architecture,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": CREATED, "created_by": tree.description} for tree in trees],
        }
    )
    config_digest = sha256_digest(config)
    blobs[config_digest] = config
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": MEDIA_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
    )
    manifest_digest = sha256_digest(manifest)
    blobs[manifest_digest] = manifest
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    # ctr names the image after io.containerd.image.name;
                    # ref.name is the OCI spelling (the tag only).
                    "annotations": {
                        "io.containerd.image.name": reference,
                        "org.opencontainers.image.ref.name": tag,
                    },
                    "platform": {"architecture": architecture, "os": "linux"},
                }
            ],
        }
    )

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as archive:
        _add_to_tar(archive, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        _add_to_tar(archive, "index.json", index)
        _add_to_tar(archive, "blobs", None)
        _add_to_tar(archive, "blobs/sha256", None)
        for digest in sorted(blobs):
            _add_to_tar(archive, "blobs/sha256/" + digest.removeprefix("sha256:"), blobs[digest])
    partial.replace(output)
    return ImageInfo(reference, output, architecture, manifest_digest, config_digest, layers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="archive to write")
    parser.add_argument(
        "--layers", type=int, default=MIN_LAYERS, help="total layers, >= 3 (default %(default)s)"
    )
    parser.add_argument("--name", default=DEFAULT_REFERENCE, help="image reference")
    parser.add_argument("--busybox", type=Path, help="static busybox binary")
    parser.add_argument("--arch", help="GOARCH in the image config (default: the host's)")
    parser.add_argument("--info", type=Path, help="write digests and chain ids here as JSON")
    args = parser.parse_args(argv)
    if args.layers < MIN_LAYERS:
        parser.error(f"--layers must be at least {MIN_LAYERS}")
    try:
        image = build_image(args.output, args.layers, args.name, args.busybox, args.arch)
    except (OSError, ValueError) as error:
        print(f"ociimage: {error}", file=sys.stderr)
        return 1
    if args.info:
        args.info.write_text(json.dumps(image.to_json(), indent=2, sort_keys=True) + "\n")
    print(
        f"{image.reference}: {len(image.layers)} layers, manifest {image.manifest_digest}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
