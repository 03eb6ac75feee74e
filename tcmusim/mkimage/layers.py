"""Layer files from the merged trees: ``mkfs.ext4 -d``, packed, stored under their digest.

Fixed timestamps, uuids derived from the content and a fixed ext4 uuid/hash
seed make the output deterministic.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tcmusim import layerfmt
from tcmusim.layerfmt import Header, Kind, Magic
from tcmusim.mkimage.tree import EPOCH, BuildError, apply_layer, tree_digest, walk

DEFAULT_SIZE_GB = 64


@dataclass
class BuiltLayer:
    source: str
    digest: str  # of the layer file (the registry blob)
    size: int
    uuid: str
    parent_uuid: str
    path: str
    diff_id: str = ""  # of the OCI layer tar holding it, when an archive was written


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
    paths = ["/"] + ["/" + path for path, _ in walk(root) if '"' not in path]
    script = "".join(
        f'sif "{path}" {field} @{EPOCH}\n' for path in paths for field in ("ctime", "atime")
    )
    done = subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)],
        input=script,
        capture_output=True,
        text=True,
        env={**os.environ, "E2FSPROGS_FAKE_TIME": str(EPOCH)},  # its superblock write time too
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"debugfs failed: {done.stderr.strip()}")


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def store_blob(store: Path, write: Path) -> tuple[str, int]:
    """Move ``write`` into the store under its sha256; return (digest, size)."""
    hexdigest = sha256_of(write)
    target = store / "sha256" / hexdigest
    target.parent.mkdir(parents=True, exist_ok=True)
    size = write.stat().st_size
    os.chmod(write, 0o644)
    shutil.move(write, target)  # the store may be on another file system than the scratch
    return f"sha256:{hexdigest}", size


def new_root(path: Path) -> Path:
    """An empty merged tree: root-owned, at the fixed time."""
    path.mkdir(mode=0o755)
    os.chown(path, 0, 0)
    os.utime(path, (EPOCH, EPOCH))
    return path


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
        merged = new_root(Path(scratch) / "merged")
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
