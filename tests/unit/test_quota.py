"""Tests of obdsnap.quota's pure parts and its blocking steps (DESIGN-v1 §16, §22 quirk 10)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from grpclib.const import Status

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.commands import CommandError, CommandTimedOut
from obdsnap.config import DEFAULT_QUOTA_PROJECT_ID, ConfigError, parse_config
from obdsnap.errors import FailedPrecondition, InvalidArgument, StepFailed
from obdsnap.mountinfo import MountEntry
from obdsnap.quota import (
    DiskQuota,
    QuotaError,
    QuotaSettings,
    check_quota_label,
    containing_mount,
    project_of,
    quota_bytes,
    quota_size,
    skipped,
)
from obdsnap.role import is_rootfs


def test_s5_rootfs_is_neither_an_unpack_nor_an_image_layer() -> None:
    """DESIGN-v1 §5: rootfs = no snapshot.ref label and snapshot/type != image."""
    assert is_rootfs("default/3/container", {})
    assert is_rootfs("view", {L.SNAPSHOT_TYPE: "container"})
    assert not is_rootfs("unpack", {L.TARGET_SNAPSHOT_REF: "sha256:ab"})
    assert not is_rootfs("default/4/extract-1 sha256:ab", {})
    assert not is_rootfs("layer", {L.SNAPSHOT_TYPE: L.SNAPSHOT_TYPE_IMAGE})


def test_s16_size_is_the_label_else_the_config() -> None:
    """DESIGN-v1 §16: the label wins (an empty one means none); only a rootfs gets a size."""
    assert quota_size("c", {}, "10g") == "10g"
    assert quota_size("c", {L.DISK_QUOTA: "1g"}, "10g") == "1g"
    assert quota_size("c", {L.DISK_QUOTA: ""}, "10g") == ""
    assert quota_size("c", {}, "") == ""
    assert quota_size("u", {L.TARGET_SNAPSHOT_REF: "x", L.DISK_QUOTA: "1g"}, "10g") == ""
    assert quota_size("i", {L.SNAPSHOT_TYPE: L.SNAPSHOT_TYPE_IMAGE}, "10g") == ""


@pytest.mark.parametrize(
    ("size", "expected"),
    [("10g", 10 << 30), ("512MiB", 512 << 20), ("1.5g", 3 << 29), ("4096", 4096), ("64 k", 65536)],
)
def test_s16_size_parses_as_go_units_ram_size(size: str, expected: int) -> None:
    """DESIGN-v1 §16 step 4: binary multiples, optional i/b, decimals."""
    assert quota_bytes(size) == expected


def test_s16_bad_size_names_the_size() -> None:
    """DESIGN-v1 §16 step 4: `failed to change size: (<s>) to kilobytes: <err>`."""
    with pytest.raises(InvalidArgument) as caught:
        quota_bytes("2 zettabytes")
    assert str(caught.value) == (
        "failed to change size: (2 zettabytes) to kilobytes: invalid size: '2 zettabytes'"
    )
    assert caught.value.status is Status.INVALID_ARGUMENT


def test_s16_label_check_only_where_the_label_applies() -> None:
    """DESIGN-v1 §16: a bad label on a rootfs is refused; on an unpack it is never read."""
    check_quota_label("c", {L.DISK_QUOTA: "3g"})
    check_quota_label("c", {L.DISK_QUOTA: ""})
    check_quota_label("u", {L.TARGET_SNAPSHOT_REF: "x", L.DISK_QUOTA: "lots"})
    with pytest.raises(InvalidArgument, match=r"^label containerd.io/snapshot/disk_quota: "):
        check_quota_label("c", {L.DISK_QUOTA: "lots"})


def test_s16_project_of_reads_the_third_field() -> None:
    """DESIGN-v1 §16 step 2: the line whose third field is the dir gives its project ID."""
    listing = (
        "    0 --------------e------- /r/new-1/block\n"
        "   77 --------------e------- /r/new-1/fs2\n"
        "16777216 --------------e------- /r/new-1/fs\n"
        "    5 --------------e------- /r/new-1/with space\n"
    )
    assert project_of(listing, "/r/new-1/fs") == 16777216
    assert project_of(listing, "/r/new-1/block") == 0
    assert project_of(listing, "/r/new-1/with space") == 5
    assert project_of(listing, "/r/new-1/work") == 0
    assert project_of("", "/r/new-1/fs") == 0
    with pytest.raises(StepFailed, match="no project ID"):
        project_of("x ---- /r/new-1/fs\n", "/r/new-1/fs")


def mount(mount_point: str, options: str = "rw") -> MountEntry:
    return MountEntry(mount_point, "ext4", "/dev/sda1", options)


def test_s16_containing_mount_is_the_longest_mount_point_above() -> None:
    """DESIGN-v1 §16 step 3: the mount containing the dir (the topmost on one point)."""
    mounts = [
        mount("/"),
        mount("/var/lib", "rw,prjquota"),
        mount("/var/lib/data"),
        mount("/var/lib", "rw,usrquota"),
    ]
    assert containing_mount("/var/lib/obd/snapshots/new-1/fs", mounts) == mounts[3]
    assert containing_mount("/var/lib/database/x", mounts) == mounts[3]
    assert containing_mount("/var/lib/data/x", mounts) == mounts[2]
    assert containing_mount("/var/lib", mounts) == mounts[3]
    assert containing_mount("/etc", mounts) == mounts[0]
    assert containing_mount("/etc", mounts[1:]) is None


def test_s16_lstat_skips_links_pipes_sockets_and_devices(tmp_path: Path) -> None:
    """DESIGN-v1 §16 step 1: symlink/pipe/socket/device are skipped; dirs and files are not."""
    os.symlink(tmp_path, tmp_path / "link")
    os.mkfifo(tmp_path / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        modes = {path.name: path.lstat().st_mode for path in tmp_path.iterdir()}
    assert all(skipped(mode) for mode in modes.values())
    assert skipped(stat.S_IFCHR | 0o600) and skipped(stat.S_IFBLK | 0o600)
    assert not skipped(tmp_path.lstat().st_mode)
    assert not skipped(stat.S_IFREG | 0o644)


def quota_on(tmp_path: Path, *, default_size: str = "", time_limit_s: float = 60.0) -> DiskQuota:
    """A quota whose tools and mount table are in ``tmp_path`` (none written yet)."""
    settings = QuotaSettings(
        default_size=default_size,
        tool_dir=str(tmp_path / "tools"),
        mountinfo=tmp_path / "mountinfo",
        time_limit_s=time_limit_s,
    )
    return DiskQuota(settings, BlockingRunner())


def write_tool(tmp_path: Path, name: str, script: str) -> None:
    tool = tmp_path / "tools" / name
    tool.parent.mkdir(exist_ok=True)
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(0o755)


def test_s16_a_symlinked_dir_is_skipped_without_running_a_tool(tmp_path: Path) -> None:
    """DESIGN-v1 §16 step 1: no lsattr runs for a symlink (there are no tools at all here)."""
    new_dir = tmp_path / "new-1"
    new_dir.mkdir()
    (new_dir / "fs").symlink_to(tmp_path)
    quota_on(tmp_path).set_quota(new_dir / "fs", "1g")


def test_s16_lstat_error_fails(tmp_path: Path) -> None:
    """DESIGN-v1 §16 step 1: a dir that cannot be lstat'ed fails the quota."""
    with pytest.raises(StepFailed, match=r"^lstat .*/missing: No such file or directory$"):
        quota_on(tmp_path).set_quota(tmp_path / "missing", "1g")


async def test_s16_set_on_wraps_the_error_with_the_path_and_id(tmp_path: Path) -> None:
    """DESIGN-v1 §16: `failed to set diskquota on upperpath, snapshot id: <id>: ...`."""
    (tmp_path / "new-1").mkdir()
    quota = quota_on(tmp_path, default_size="1m")
    with pytest.raises(QuotaError) as caught:
        await quota.set_on(tmp_path / "new-1", 9, "c", {}, work=False)
    assert str(caught.value).startswith(
        "failed to set diskquota on upperpath, snapshot id: 9: lstat "
    )
    assert (caught.value.snapshot_id, caught.value.status) == (9, Status.UNKNOWN)
    await quota.set_on(tmp_path / "new-1", 9, "c", {L.DISK_QUOTA: ""}, work=False)  # no size


def test_s16_tool_stderr_is_in_the_error(tmp_path: Path) -> None:
    """DESIGN-v1 §16: a failing tool's stderr is told."""
    write_tool(tmp_path, "lsattr", "echo 'lsattr: Inappropriate ioctl' >&2; exit 1")
    (tmp_path / "fs").mkdir()
    with pytest.raises(CommandError) as caught:
        quota_on(tmp_path).set_quota(tmp_path / "fs", "1g")
    assert str(caught.value).endswith("failed (exit 1): lsattr: Inappropriate ioctl")
    assert caught.value.step == "lsattr"
    assert caught.value.status is Status.UNKNOWN


def test_s16_tool_runs_with_a_time_limit(tmp_path: Path) -> None:
    """DESIGN-v1 §16: a tool that hangs is killed at the time limit."""
    write_tool(tmp_path, "lsattr", "exec sleep 30")
    (tmp_path / "fs").mkdir()
    with pytest.raises(CommandTimedOut, match="did not finish within 0s"):
        quota_on(tmp_path, time_limit_s=0.2).set_quota(tmp_path / "fs", "1g")


def test_s16_missing_tool_is_an_error(tmp_path: Path) -> None:
    """DESIGN-v1 §16: no lsattr where the config says: the quota fails, naming the tool."""
    (tmp_path / "fs").mkdir()
    with pytest.raises(CommandError, match=r"cannot run .*/tools/lsattr: No such file"):
        quota_on(tmp_path).set_quota(tmp_path / "fs", "1g")


def test_s16_a_mount_table_without_the_dir_is_refused(tmp_path: Path) -> None:
    """DESIGN-v1 §16 step 3: no mount found for the dir is a node problem, not a crash."""
    write_tool(tmp_path, "lsattr", "true")
    (tmp_path / "fs").mkdir()
    (tmp_path / "mountinfo").write_text("21 1 8:1 / /elsewhere rw - ext4 /dev/sda1 rw,prjquota\n")
    with pytest.raises(FailedPrecondition, match="no mount holds"):
        quota_on(tmp_path).set_quota(tmp_path / "fs", "1g")


def test_s22_q10_quota_config_keys() -> None:
    """DESIGN-v1 §22 quirk 10: quotaProjectId, and where the tools and mount table are."""
    default = parse_config({})
    assert default.quota_project_id == DEFAULT_QUOTA_PROJECT_ID == 16777216
    assert (default.quota_tool_dir, default.quota_mountinfo) == ("", "/proc/self/mountinfo")
    raw = {"quotaToolDir": "/opt/q", "quotaMountinfo": "/run/m", "quotaProjectId": 9}
    config = parse_config({**raw, "rootfsQuota": "10g"})
    assert {key: config.as_json()[key] for key in raw} == raw
    settings = QuotaSettings.from_config(config)
    assert settings == QuotaSettings("10g", 9, "/opt/q", Path("/run/m"))


@pytest.mark.parametrize("key", ["quotaToolDir", "quotaMountinfo"])
def test_s16_quota_paths_must_be_absolute(key: str) -> None:
    """DESIGN-v1 §16: a relative tool dir or mount table would depend on the cwd."""
    with pytest.raises(ConfigError, match=f'"{key}": must be an absolute path'):
        parse_config({key: "bin"})
    with pytest.raises(ConfigError, match='"quotaMountinfo"'):
        parse_config({"quotaMountinfo": ""})
