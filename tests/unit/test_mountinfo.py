from pathlib import Path

import pytest

from obdsnap.mountinfo import (
    is_mounted,
    mount_at,
    mounted_source,
    mounts_under,
    overlay_uses,
    parse_line,
    read_mounts,
)

OVERLAY_OPTIONS = (
    "rw,lowerdir=/r/snapshots/9/block/mountpoint,upperdir=/r/snapshots/12/fs,"
    "workdir=/r/snapshots/12/work"
)
MOUNTINFO = f"""\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:27 / /r/snapshots/9/block/mountpoint ro,relatime - ext4 /dev/loop3 ro,discard
31 22 0:28 / /run/c1/rootfs rw,relatime - overlay overlay {OVERLAY_OPTIONS}
32 22 0:29 / /mnt/with\\040space rw - tmpfs tmpfs rw
33 22 0:30 / /x rw shared:5 master:2 - tmpfs tmp\\011fs rw
"""


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return path


def test_entries_are_parsed_with_optional_fields_and_escapes(table: Path) -> None:
    entries = read_mounts(table)
    assert [entry.mount_point for entry in entries] == [
        "/",
        "/r/snapshots/9/block/mountpoint",
        "/run/c1/rootfs",
        "/mnt/with space",
        "/x",
    ]
    assert entries[2].fs_type == "overlay"
    assert entries[4].source == "tmp\tfs"


def test_is_mounted_is_exact(table: Path) -> None:
    assert is_mounted(Path("/r/snapshots/9/block/mountpoint"), table)
    assert not is_mounted(Path("/r/snapshots/9/block"), table)
    assert is_mounted(Path("/mnt/with space"), table)


def test_overlay_uses_looks_at_overlay_super_options_only(table: Path) -> None:
    assert overlay_uses(Path("/r/snapshots/9/block/mountpoint"), table)
    assert not overlay_uses(Path("/r/snapshots/8/block/mountpoint"), table)
    assert not overlay_uses(Path("/dev/loop3"), table)  # in an ext4 line, not an overlay's


def test_mounts_under_a_tree(table: Path) -> None:
    assert mounts_under(Path("/r/snapshots/9"), table) == ["/r/snapshots/9/block/mountpoint"]
    assert mounts_under(Path("/r/snapshots/1"), table) == []
    assert mounts_under(Path("/r/snapshots/9/"), table) == ["/r/snapshots/9/block/mountpoint"]


def test_mounted_source_is_the_topmost_mounts(table: Path) -> None:
    assert mounted_source(Path("/r/snapshots/9/block/mountpoint"), table) == "/dev/loop3"
    assert mounted_source(Path("/r/snapshots/9/block"), table) is None
    stacked = (
        table.read_text() + "34 30 0:31 / /r/snapshots/9/block/mountpoint rw - ext4 /dev/loop4 rw\n"
    )
    table.write_text(stacked)
    assert mounted_source(Path("/r/snapshots/9/block/mountpoint"), table) == "/dev/loop4"


def test_mount_at_gives_the_topmost_entry_with_its_per_mount_options(table: Path) -> None:
    entry = mount_at(Path("/r/snapshots/9/block/mountpoint"), table)
    assert entry is not None
    assert (entry.source, entry.options, entry.super_options) == (
        "/dev/loop3",
        "ro,relatime",
        "ro,discard",
    )
    assert mount_at(Path("/r/snapshots/9"), table) is None


def test_parse_line_unescapes_and_refuses_a_line_without_separator() -> None:
    entry = parse_line(r"40 22 0:40 / /a\134b\040c rw,noatime - overlay overlay lowerdir=/l")
    assert entry is not None
    assert (entry.mount_point, entry.options) == ("/a\\b c", "rw,noatime")
    assert parse_line("40 22 0:40 / /a rw") is None


def test_mounts_under_keeps_the_tables_order_and_stacked_mounts(tmp_path: Path) -> None:
    points = ["/a/b/z", "/a/b", "/a/b-x", "/a/bc", "/a/b/z", "/a/b/y", "/", "/a/b/"]
    table = tmp_path / "mountinfo"
    table.write_text(
        "".join(f"{n} 1 0:{n} / {point} rw - tmpfs tmpfs rw\n" for n, point in enumerate(points))
    )
    assert mounts_under(Path("/a/b"), table) == ["/a/b/z", "/a/b", "/a/b/z", "/a/b/y", "/a/b/"]
    assert mounts_under(Path("/"), table) == points
    assert mounts_under(Path("/a/b/z"), table) == ["/a/b/z", "/a/b/z"]
    assert mounts_under(Path("/a/c"), table) == []
