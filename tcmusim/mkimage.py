"""Build overlaybd-style image layers (and an OCI archive of them) for the simulator.

Input: directory trees or OCI layer tarballs (``.tar``, ``.tar.gz``), bottom
layer first. Layer *k* is applied with overlay semantics onto the merged tree of
layers 1..k-1 (``.wh.<name>`` deletes ``<name>``, ``.wh..wh..opq`` empties its
directory of lower entries; in a directory input an overlayfs whiteout, a 0/0
character device, deletes too), then ``mkfs.ext4 -d`` turns the merged tree
into the layer's image, which is packed into a layer file (see
:mod:`tcmusim.layerfmt`) chained to the previous one by uuid.

Output: each layer file stored as ``<store>/sha256/<hex>`` and, with
``--oci-tar``, an OCI image layout tar (``ctr image import`` reads it) whose
layer *k* is a tar holding the single file ``overlaybd.commit`` = blob *k*, the
shape of an overlaybd local-format image. Fixed timestamps, uuids derived from
the content and a fixed ext4 uuid/hash seed make the output deterministic.

Command line::

    obdsnap-sim-mkimage --store DIR [--oci-tar FILE] [--ref REF] [-z] LAYER...

prints ``{"layers": [{"digest", "size", "uuid", "diff_id", ...}], ...}`` as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tcmusim import layerfmt
from tcmusim.layerfmt import Header, Kind, Magic

EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"
DEFAULT_SIZE_GB = 64
DEFAULT_REF = "docker.io/library/tcmusim:latest"
OPAQUE = ".wh..wh..opq"
WHITEOUT = ".wh."
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


class BuildError(Exception):
    pass


@dataclass
class BuiltLayer:
    source: str
    digest: str  # of the layer file (the registry blob)
    size: int
    uuid: str
    parent_uuid: str
    path: str
    diff_id: str = ""  # of the OCI layer tar holding it, when an archive was written


# -- applying a layer onto the merged tree ------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _clear_dir(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)


def _ensure_parents(root: Path, relative: str) -> None:
    current = root
    for part in Path(relative).parent.parts:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            current.unlink()
        if not current.exists():
            current.mkdir(mode=0o755)


def _normalize(name: str) -> str:
    path = posixpath.normpath("/" + name).lstrip("/")
    if path.startswith("../") or path == "..":
        raise BuildError(f"layer entry escapes the root: {name}")
    return "" if path == "." else path


def _dir_mtimes(root: Path) -> dict[str, int]:
    found = {"": root.stat().st_mtime_ns}
    for directory, dirnames, _ in os.walk(root):
        for name in dirnames:
            path = Path(directory) / name
            if not path.is_symlink():
                found[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return found


def _restore_dir_mtimes(root: Path, before: dict[str, int], explicit: dict[str, int]) -> None:
    # Applying a layer touches directories it does not describe: give them back their times.
    for relative in _dir_mtimes(root):
        mtime = explicit.get(relative, before.get(relative, EPOCH * 10**9))
        os.utime(root / relative, ns=(mtime, mtime), follow_symlinks=False)


def apply_tar(root: Path, source: Path) -> None:
    before = _dir_mtimes(root)
    explicit: dict[str, int] = {}
    with tarfile.open(source, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            path = _normalize(member.name)
            parent, base = posixpath.split(path)
            if base == OPAQUE:
                _clear_dir(root / parent)
            elif base.startswith(WHITEOUT):
                _remove(root / parent / base[len(WHITEOUT) :])
        for member in members:
            path = _normalize(member.name)
            base = posixpath.basename(path)
            if not path or base.startswith(WHITEOUT):
                continue
            target = root / path
            _ensure_parents(root, path)
            if member.isdir():
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    target.unlink()
                target.mkdir(exist_ok=True)
                os.chown(target, member.uid, member.gid)
                os.chmod(target, member.mode & 0o7777)
                explicit[path] = int(member.mtime) * 10**9
                continue
            _remove(target)
            member.name = path
            tar.extract(member, root, set_attrs=True, numeric_owner=True, filter="fully_trusted")
    _restore_dir_mtimes(root, before, explicit)


def _walk(source: Path, relative: str = "") -> Iterator[tuple[str, os.stat_result]]:
    directory = source / relative
    for name in sorted(os.listdir(directory)):
        path = posixpath.join(relative, name) if relative else name
        st = os.lstat(source / path)
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(source, path)


def _is_whiteout(name: str, st: os.stat_result) -> bool:
    return name.startswith(WHITEOUT) or (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0)


def apply_dir(root: Path, source: Path) -> None:
    before = _dir_mtimes(root)
    explicit: dict[str, int] = {}
    entries = list(_walk(source))
    for path, st in entries:
        parent, base = posixpath.split(path)
        if base == OPAQUE:
            _clear_dir(root / parent)
        elif base.startswith(WHITEOUT):
            _remove(root / parent / base[len(WHITEOUT) :])
        elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            _remove(root / path)
    for path, st in entries:
        if _is_whiteout(posixpath.basename(path), st):
            continue
        target = root / path
        _ensure_parents(root, path)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            target.mkdir(exist_ok=True)
            explicit[path] = st.st_mtime_ns
        else:
            _remove(target)
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(source / path), target)
            elif stat.S_ISREG(mode):
                shutil.copyfile(source / path, target)
            else:
                os.mknod(target, mode, st.st_rdev)
        os.lchown(target, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(mode):
            os.chmod(target, stat.S_IMODE(mode))
        os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
    _restore_dir_mtimes(root, before, explicit)


def apply_layer(root: Path, source: Path) -> None:
    if source.is_dir():
        apply_dir(root, source)
    elif source.is_file():
        apply_tar(root, source)
    else:
        raise BuildError(f"{source}: neither a directory nor a tarball")


def tree_digest(root: Path) -> str:
    """What mkfs -d will see, in a digest: names, types, owners, modes, times, contents."""
    digest = hashlib.sha256()
    for path, st in _walk(root):
        digest.update(
            f"{path}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_mtime_ns}\0".encode()
        )
        if stat.S_ISREG(st.st_mode):
            with open(root / path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        elif stat.S_ISLNK(st.st_mode):
            digest.update(os.readlink(root / path).encode())
        else:
            digest.update(str(st.st_rdev).encode())
    return digest.hexdigest()


# -- images and blobs ---------------------------------------------------------------------------


def make_ext4(root: Path, image: Path, size: int, layer_uuid: str) -> None:
    with open(image, "wb") as f:
        f.truncate(size)
    command = [
        "mkfs.ext4", "-F", "-q", "-b", "4096",
        "-O", "^has_journal,sparse_super,flex_bg", "-G", "1",
        "-E", f"lazy_itable_init=1,nodiscard,hash_seed={layerfmt.derived_uuid('hash', layer_uuid)}",
        "-U", layerfmt.derived_uuid("fs", layer_uuid),
        "-d", str(root), str(image),
    ]  # fmt: skip
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(EPOCH)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise BuildError(f"mkfs.ext4 failed: {done.stderr.strip()}")
    _fix_inode_times(root, image)


def _fix_inode_times(root: Path, image: Path) -> None:
    """mkfs -d copies each file's ctime and atime, which no one can set: fix them afterwards."""
    paths = ["/"] + ["/" + path for path, _ in _walk(root) if '"' not in path]
    script = "".join(
        f'sif "{path}" {field} @{EPOCH}\n' for path in paths for field in ("ctime", "atime")
    )
    done = subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"debugfs failed: {done.stderr.strip()}")


def store_blob(store: Path, write: Path) -> tuple[str, int]:
    """Move ``write`` into the store under its sha256; return (digest, size)."""
    digest = hashlib.sha256()
    with open(write, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    target = store / "sha256" / hexdigest
    target.parent.mkdir(parents=True, exist_ok=True)
    size = write.stat().st_size
    os.chmod(write, 0o644)
    os.replace(write, target)
    return f"sha256:{hexdigest}", size


def build_layers(
    sources: Sequence[Path],
    store: Path,
    *,
    size_gb: int = DEFAULT_SIZE_GB,
    zfile: bool = False,
    work_dir: Path | None = None,
) -> list[BuiltLayer]:
    if not sources:
        raise BuildError("no layers given")
    size = size_gb << 30
    built: list[BuiltLayer] = []
    with tempfile.TemporaryDirectory(prefix="tcmusim-mkimage-", dir=work_dir) as scratch:
        merged = Path(scratch) / "merged"
        merged.mkdir(mode=0o755)
        os.chown(merged, 0, 0)
        os.utime(merged, (EPOCH, EPOCH))
        parent = ""
        for index, source in enumerate(sources):
            apply_layer(merged, source)
            layer_uuid = layerfmt.derived_uuid("layer", parent, tree_digest(merged))
            image = Path(scratch) / f"layer{index}.img"
            make_ext4(merged, image, size, layer_uuid)
            header = Header(
                magic=Magic.ZFILE if zfile else Magic.LSMT,
                kind=Kind.COMMIT,
                virtual_size=size,
                uuid=layer_uuid,
                parent_uuid=parent,
                algorithm="lz4" if zfile else "",
                block_size=4096 if zfile else 0,
            )
            packed = Path(scratch) / f"layer{index}.commit"
            src = os.open(image, os.O_RDONLY)
            out = os.open(packed, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                layerfmt.pack(src, 0, header, out, tar_name=None)
            finally:
                os.close(src)
                os.close(out)
            image.unlink()
            digest, blob_size = store_blob(store, packed)
            path = store / "sha256" / digest.split(":", 1)[1]
            built.append(BuiltLayer(str(source), digest, blob_size, layer_uuid, parent, str(path)))
            parent = layer_uuid
    return built


# -- the OCI archive ------------------------------------------------------------------------------


def _tar_info(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _layer_tar(blob: Path, out: Path) -> tuple[str, int]:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar, open(blob, "rb") as f:
        tar.addfile(_tar_info("overlaybd.commit", blob.stat().st_size), f)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return f"sha256:{digest}", out.stat().st_size


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def write_oci_archive(layers: list[BuiltLayer], out: Path, ref: str) -> str:
    """The OCI layout tar of an overlaybd local-format image; returns the manifest digest."""
    blobs: dict[str, bytes | Path] = {}
    descriptors = []
    with tempfile.TemporaryDirectory(prefix="tcmusim-oci-", dir=out.parent) as scratch:
        for index, layer in enumerate(layers):
            tar_path = Path(scratch) / f"layer{index}.tar"
            digest, size = _layer_tar(Path(layer.path), tar_path)
            layer.diff_id = digest
            blobs[digest] = tar_path
            descriptors.append({"mediaType": MEDIA_LAYER, "digest": digest, "size": size})
        config = json.dumps(
            {
                "created": CREATED,
                "architecture": _architecture(),
                "os": "linux",
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
                "history": [{"created": CREATED, "created_by": "tcmusim mkimage"} for _ in layers],
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
                tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
            for name in ("blobs", "blobs/sha256"):
                info = _tar_info(name, 0, 0o755)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            for digest in sorted(blobs):
                content = blobs[digest]
                name = "blobs/sha256/" + digest.split(":", 1)[1]
                if isinstance(content, Path):
                    with open(content, "rb") as f:
                        tar.addfile(_tar_info(name, content.stat().st_size), f)
                else:
                    tar.addfile(_tar_info(name, len(content)), io.BytesIO(content))
    return manifest_digest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="obdsnap-sim-mkimage",
        description="Build overlaybd-style layer blobs (and an OCI archive) for tcmusim.",
    )
    parser.add_argument(
        "layers", nargs="+", type=Path, help="directories or layer tarballs, base first"
    )
    parser.add_argument(
        "--store", type=Path, required=True, help="blob store: <store>/sha256/<hex>"
    )
    parser.add_argument("--oci-tar", type=Path, help="also write an OCI image layout tar here")
    parser.add_argument("--ref", default=DEFAULT_REF, help="image name in the OCI archive")
    parser.add_argument("--size-gb", type=int, default=DEFAULT_SIZE_GB, help="virtual disk size")
    parser.add_argument("-z", "--zfile", action="store_true", help="ZFile magic instead of LSMT")
    parser.add_argument("--work-dir", type=Path, help="scratch space (default: the system's)")
    args = parser.parse_args(argv)
    try:
        layers = build_layers(
            args.layers, args.store, size_gb=args.size_gb, zfile=args.zfile, work_dir=args.work_dir
        )
        result: dict[str, object] = {}
        if args.oci_tar:
            result["manifest_digest"] = write_oci_archive(layers, args.oci_tar, args.ref)
            result["oci_tar"] = str(args.oci_tar)
            result["ref"] = args.ref
        result["layers"] = [asdict(layer) for layer in layers]
    except (BuildError, OSError, tarfile.TarError) as exc:
        print(f"obdsnap-sim-mkimage: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
