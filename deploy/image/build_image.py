"""obdsnap's container image: an OCI image layout archive, built offline.

    python3 deploy/image/build_image.py --deb obdsnap_<version>_<arch>.deb --output DIR

A Debian 12 root made by mmdebstrap with the tools obdsnap runs (cached: see
debian_rootfs.py), the package installed into it with dpkg, slimmed, and packed
as one gzip layer. The archive is ``DIR/obdsnap-<version>.oci.tar`` and holds
``localhost/obdsnap:<version>``, which ``ctr images import`` takes as it is.

Reproducible: every timestamp is SOURCE_DATE_EPOCH (the last commit's time when
unset) or older, tar entries are sorted, owners numeric, gzip headers carry no
name or time, so the same root always packs to the same digest.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian_rootfs import (
    REPO_ROOT,
    RootUnavailable,
    build_dir,
    in_root_command,
    root_tarball,
)

SUITE = "bookworm"
VARIANT = "essential"
ROOT_NAME = f"image-{SUITE}"
# merged-/usr by symlinks rather than by the usrmerge package, which pulls in perl;
# and no Recommends: the image holds what obdsnap runs, nothing more.
MMDEBSTRAP_OPTIONS = (
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    '--aptopt=APT::Install-Recommends "false"',
)
# What obdsnap runs (mkfs, mount, modprobe) and what the package depends on.
PACKAGES = ("e2fsprogs", "kmod", "mount", "python3", "util-linux", "xfsprogs")
ENTRYPOINT = ["/usr/bin/obdsnap"]
CMD = ["serve", "--config", "/etc/overlaybd-snapshotter/config.json"]
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REGISTRY = "localhost"
# The image's date where neither SOURCE_DATE_EPOCH nor git history says one (the Makefile's too).
FALLBACK_EPOCH = 1700000000

# Left out of the image: documentation, apt's downloaded lists and caches, logs of
# the build, backups dpkg and debconf keep, and what the runtime provides (/dev).
SLIMMED = (
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/lintian/*",
    "usr/share/locale/*",
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dpkg/*-old",
    "var/log/*",
    "tmp/*",
    "dev/*",
)

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclass(frozen=True)
class BuiltImage:
    archive: Path
    reference: str
    manifest_digest: str
    layer_size: int
    uncompressed_size: int


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time, else a fixed date."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0 and done.stdout.strip():
        return int(done.stdout.strip())
    return FALLBACK_EPOCH


def reference(version: str) -> str:
    return f"{REGISTRY}/obdsnap:{version}"


def base_root() -> Path:
    """The cached tarball of the Debian root without obdsnap."""
    return root_tarball(SUITE, PACKAGES, VARIANT, ROOT_NAME, MMDEBSTRAP_OPTIONS)


def install_root(base: Path, deb: Path, root: Path) -> None:
    """``base`` unpacked into the empty directory ``root``, with ``deb`` installed, slimmed."""
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(base)], check=True)
    shutil.copy(deb, root / "tmp" / deb.name)
    done = subprocess.run(
        in_root_command(root, ["dpkg", "-i", f"/tmp/{deb.name}"]),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"dpkg -i {deb.name} failed in the root:\n{done.stderr[-4000:]}")
    for pattern in SLIMMED:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def pack_image(root: Path, output: Path, version: str, epoch: int) -> BuiltImage:
    """Packs the directory ``root`` into the OCI archive ``output``; the same root, version
    and epoch give the same bytes."""
    with tempfile.TemporaryDirectory(prefix="obdsnap-image-", dir=output.parent) as scratch:
        blobs = Path(scratch) / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer, diff_id, uncompressed = _pack_layer(root, blobs, epoch)
        config = _write_blob(blobs, _canonical(_image_config(version, epoch, diff_id)))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": _descriptor(MEDIA_CONFIG, config),
            "layers": [_descriptor(MEDIA_LAYER, layer)],
        }
        manifest_blob = _write_blob(blobs, _canonical(manifest))
        name = reference(version)
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    **_descriptor(MEDIA_MANIFEST, manifest_blob),
                    "platform": {"architecture": _goarch(), "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name,
                    },
                }
            ],
        }
        (Path(scratch) / "index.json").write_bytes(_canonical(index))
        (Path(scratch) / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
        partial = output.with_suffix(".tar.new")
        _write_archive(Path(scratch), partial, epoch)
        os.replace(partial, output)
    return BuiltImage(output, name, manifest_blob.digest, layer.size, uncompressed)


def _pack_layer(root: Path, blobs: Path, epoch: int) -> tuple[Blob, str, int]:
    """The root as one gzip layer blob; returns it, its diff ID and its uncompressed size."""
    entries = sorted(entry.name for entry in root.iterdir())
    tar = subprocess.Popen(
        [
            "tar", "--create", "--file=-", "--directory", str(root),
            "--sort=name", "--numeric-owner", "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            f"--mtime=@{epoch}", "--clamp-mtime", "--", *entries,
        ],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert tar.stdout is not None
    partial = blobs / "layer.partial"
    diff = hashlib.sha256()
    size = 0
    with partial.open("wb") as raw, gzip.GzipFile("", "wb", 6, raw, mtime=0) as compressed:
        while chunk := tar.stdout.read(1 << 20):
            diff.update(chunk)
            size += len(chunk)
            compressed.write(chunk)
    if tar.wait() != 0:
        raise RuntimeError(f"tar of {root} failed with {tar.returncode}")
    digest = hashlib.sha256()
    with partial.open("rb") as packed:
        while chunk := packed.read(1 << 20):
            digest.update(chunk)
    packed_size = partial.stat().st_size
    os.replace(partial, blobs / digest.hexdigest())
    return Blob(f"sha256:{digest.hexdigest()}", packed_size), f"sha256:{diff.hexdigest()}", size


def _image_config(version: str, epoch: int, diff_id: str) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return {
        "created": created,
        "architecture": _goarch(),
        "os": "linux",
        "config": {
            "Entrypoint": ENTRYPOINT,
            "Cmd": CMD,
            "Env": [PATH_ENV],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "obdsnap",
                "org.opencontainers.image.description": (
                    "containerd proxy snapshotter for overlaybd images"
                ),
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.created": created,
                "org.opencontainers.image.base.name": f"debian:{SUITE}",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [
            {
                "created": created,
                "created_by": f"mmdebstrap --variant={VARIANT} {SUITE}; dpkg -i obdsnap.deb",
            }
        ],
    }


def _write_archive(layout: Path, archive: Path, epoch: int) -> None:
    """The layout directory as a tar of sorted entries, owned by 0, dated ``epoch``."""
    paths = sorted(p for p in layout.rglob("*"))
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tar.gettarinfo(str(path), path.relative_to(layout).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = epoch
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isdir():
                tar.addfile(info)
            else:
                with path.open("rb") as data:
                    tar.addfile(info, data)


def _write_blob(blobs: Path, data: bytes) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return Blob(f"sha256:{digest}", len(data))


def _descriptor(media_type: str, blob: Blob) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": blob.digest, "size": blob.size}


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _goarch() -> str:
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


def build(deb: Path, output_dir: Path, version: str) -> BuiltImage:
    output_dir.mkdir(parents=True, exist_ok=True)
    base = base_root()
    root = Path(tempfile.mkdtemp(prefix="obdsnap-image-root-", dir=output_dir))
    try:
        install_root(base, deb, root)
        archive = output_dir / f"obdsnap-{version}.oci.tar"
        return pack_image(root, archive, version, source_date_epoch())
    finally:
        shutil.rmtree(root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Builds obdsnap's OCI image archive.")
    parser.add_argument("--deb", type=Path, required=True, help="the obdsnap .deb to install")
    parser.add_argument("--version", required=True, help="the image's tag")
    parser.add_argument("--output", type=Path, default=build_dir() / "image")
    args = parser.parse_args(argv)
    if not args.deb.is_file():
        print(f"build_image: no package {args.deb} (make deb builds it)", file=sys.stderr)
        return 1
    try:
        image = build(args.deb, args.output, args.version)
    except (RootUnavailable, RuntimeError, OSError, subprocess.CalledProcessError) as error:
        print(f"build_image: {error}", file=sys.stderr)
        return 1
    print(f"{image.archive} {image.reference} {image.manifest_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
