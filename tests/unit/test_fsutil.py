"""Tests of obdsnap.fsutil: disk usage as containerd's fs.DiskUsage counts it, tree removal."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from obdsnap import fsutil
from obdsnap.fsutil import (
    disk_usage,
    make_real_directory,
    remove_tree,
    write_file_durably,
    write_file_no_follow,
)
from obdsnap.storage import Usage


def blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def test_empty_dir_counts_the_root(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    root.mkdir()
    assert disk_usage(root) == Usage(size=blocks(root), inodes=1)


def test_tree_with_hard_links_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    sub = root / "sub" / "deeper"
    sub.mkdir(parents=True)
    data = root / "data"
    data.write_bytes(os.urandom(20000))
    os.link(data, sub / "data-link")
    os.link(data, root / "sub" / "data-link2")
    small = sub / "small"
    small.write_bytes(b"x")
    (root / "empty").touch()
    os.symlink("data", root / "symlink")
    os.symlink("/nonexistent/target", root / "dangling")

    unique = [
        root,
        root / "sub",
        sub,
        data,
        small,
        root / "empty",
        root / "symlink",
        root / "dangling",
    ]
    expected = Usage(size=sum(blocks(p) for p in unique), inodes=len(unique))
    # The hard-linked file's blocks and inode count once, not three times.
    assert blocks(data) > 0
    assert disk_usage(root) == expected


def test_size_is_allocated_blocks_not_length(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    root.mkdir()
    sparse = root / "sparse"
    with sparse.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    usage = disk_usage(root)
    assert usage.inodes == 2
    assert usage.size == blocks(root) + blocks(sparse)
    assert usage.size < 64 * 1024 * 1024


def test_hard_link_to_outside_file_counts_once(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"y" * 5000)
    root = tmp_path / "fs"
    root.mkdir()
    os.link(outside, root / "a")
    os.link(outside, root / "b")
    assert disk_usage(root) == Usage(size=blocks(root) + blocks(outside), inodes=2)


def test_usage_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"z" * 10000)
    assert disk_usage(path) == Usage(size=blocks(path), inodes=1)


def test_skipped_names_are_left_out_at_any_depth_with_what_they_hold(tmp_path: Path) -> None:
    root = tmp_path / "block"
    (root / "mountpoint" / "inside").mkdir(parents=True)
    (root / "mountpoint" / "inside" / "big").write_bytes(os.urandom(40000))
    (root / "sub" / "mountpoint").mkdir(parents=True)
    (root / "sub" / "mountpoint" / "f").write_bytes(b"f" * 9000)
    kept = root / "config.v1.json"
    kept.write_bytes(b"{}")
    counted = [root, root / "sub", kept]
    expected = Usage(size=sum(blocks(p) for p in counted), inodes=len(counted))
    assert disk_usage(root, skip=frozenset({"mountpoint"})) == expected
    # The root itself is never skipped, whatever its name.
    assert disk_usage(root / "mountpoint", skip=frozenset({"mountpoint"})).inodes == 3


def test_remove_tree(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    os.symlink("/", root / "link-to-root")
    remove_tree(root)
    assert not root.exists()
    assert Path("/").exists()


def test_remove_tree_of_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "never-was"
    remove_tree(missing)
    assert not missing.exists()
    remove_tree(tmp_path / "no" / "parent" / "either")


def test_remove_tree_removes_a_stray_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a directory")
    remove_tree(path)
    assert not path.exists()


def test_remove_tree_still_reports_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file").write_text("x")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "refused")

    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.raises(PermissionError):
        remove_tree(tree)
    monkeypatch.undo()
    assert (tree / "file").exists()


def test_remove_tree_refuses_a_tree_with_a_mount_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "snap"
    mountpoint = root / "block" / "mountpoint"
    mountpoint.mkdir(parents=True)
    (mountpoint / "device-data").write_text("precious")
    seen: list[Path] = []

    def mounts_under(path: Path) -> list[str]:
        seen.append(path)
        return [str(mountpoint)]

    monkeypatch.setattr(fsutil, "mounts_under", mounts_under)
    with pytest.raises(OSError) as caught:
        remove_tree(root)
    assert caught.value.errno == errno.EBUSY
    assert seen == [root]
    assert (mountpoint / "device-data").read_text() == "precious"


@pytest.mark.parametrize("write", [write_file_no_follow, write_file_durably])
def test_a_write_replaces_a_planted_symlink(
    tmp_path: Path, write: Callable[[Path, bytes], None]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / "init-debug.log"
    planted.symlink_to(victim)
    write(planted, b"/dev/sdc")
    assert victim.read_text() == "precious"
    assert not planted.is_symlink()
    assert planted.read_bytes() == b"/dev/sdc"


def test_write_file_no_follow_does_not_follow_a_dangling_symlink(tmp_path: Path) -> None:
    """O_CREAT through a dangling link would create its target: /etc/anything."""
    target = tmp_path / "would-be-created"
    planted = tmp_path / "backstore_mark"
    planted.symlink_to(target)
    write_file_no_follow(planted, b"x")
    assert not target.exists()
    assert planted.read_bytes() == b"x"


@pytest.mark.parametrize("planted", ["symlink", "file", "missing", "directory"])
def test_make_real_directory(tmp_path: Path, planted: str) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    path = tmp_path / "mountpoint"
    if planted == "symlink":
        path.symlink_to(victim)
    elif planted == "file":
        path.write_text("x")
    elif planted == "directory":
        path.mkdir(mode=0o755)
        (path / "inside").write_text("kept")
    make_real_directory(path, 0o711)
    assert path.is_dir() and not path.is_symlink()
    assert sorted(os.listdir(victim)) == ["keep"]
    if planted == "directory":
        assert (path / "inside").read_text() == "kept"
    else:
        assert stat.S_IMODE(path.stat().st_mode) == 0o711 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_file_no_follow_writes_regular_files(tmp_path: Path) -> None:
    path = tmp_path / "backstore_mark"
    write_file_no_follow(path, b"/dev/sdc")
    write_file_no_follow(path, b"/dev/sd")
    assert path.read_bytes() == b"/dev/sd"
    assert path.stat().st_mode & 0o777 == 0o644


def test_remove_tree_removes_a_planted_symlink_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    planted = tmp_path / "snapshots-99"
    planted.symlink_to(target)
    remove_tree(planted)
    assert not planted.is_symlink()
    assert (target / "keep.txt").read_text() == "keep"


def test_write_file_durably_replaces_the_whole_file_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "commit_request.json"
    path.write_bytes(b"an older and longer request")
    write_file_durably(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["commit_request.json"]


def test_write_file_durably_cut_short_leaves_the_old_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails before its rename (here: the disk fails the fsync) changes nothing."""
    path = tmp_path / "writable_location.json"
    path.write_bytes(b"old")

    def failing_fsync(descriptor: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_file_durably(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["writable_location.json"]
