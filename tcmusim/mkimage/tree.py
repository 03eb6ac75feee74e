"""Applying a layer onto the merged tree, with overlay semantics, and its digest.

Layer *k* is applied onto the merged tree of layers 1..k-1: ``.wh.<name>``
deletes ``<name>``, ``.wh..wh..opq`` empties its directory of lower entries; in
a directory input an overlayfs whiteout, a 0/0 character device, deletes too.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

EPOCH = 1_700_000_000
OPAQUE = ".wh..wh..opq"
WHITEOUT = ".wh."


class BuildError(Exception):
    pass


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
            if member.issym():  # tarfile leaves a symlink's own time at the time of extraction
                mtime = int(member.mtime) * 10**9
                os.utime(target, ns=(mtime, mtime), follow_symlinks=False)
    _restore_dir_mtimes(root, before, explicit)


def walk(source: Path, relative: str = "") -> Iterator[tuple[str, os.stat_result]]:
    directory = source / relative
    for name in sorted(os.listdir(directory)):
        path = posixpath.join(relative, name) if relative else name
        st = os.lstat(source / path)
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from walk(source, path)


def _is_whiteout(name: str, st: os.stat_result) -> bool:
    return name.startswith(WHITEOUT) or (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0)


def apply_dir(root: Path, source: Path) -> None:
    before = _dir_mtimes(root)
    explicit: dict[str, int] = {}
    entries = list(walk(source))
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
    for path, st in walk(root):
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
