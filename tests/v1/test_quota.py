"""DESIGN-v1 §16 (and §5, §22 quirk 10): the project quota of a new container rootfs.

This kernel has no project quota, so obdsnap runs here with ``quotaToolDir``
pointing at stand-in ``lsattr``/``chattr``/``setquota`` scripts, which record
their argv, fail when a test asks, and list project IDs from a table; and with
``quotaMountinfo`` naming a mount table the test writes, where obdsnap's root
is a mount with or without ``prjquota``. Everything else is the real code path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Obd
from support.block_fixtures import StartObd
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap import labels as L

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

PROJECT = "16777216"
NEW_DIR = re.compile(r"/snapshots/new-[0-9a-f]{16}-[0-9]+$")
# One script for the three tools: its name says which one it is.
STAND_IN = """#!/bin/sh
# A quota tool stand-in: records its argv, fails when asked, lists project IDs from a table.
here=$(dirname "$0"); tool=$(basename "$0")
{ printf '%s' "$tool"; for arg in "$@"; do printf '\\t%s' "$arg"; done; echo; } >> "$here/calls"
if [ -f "$here/$tool.fails" ]; then cat "$here/$tool.fails" >&2; exit 1; fi
if [ "$tool" = lsattr ]; then
    for entry in "$2"/*; do
        id=$(awk -v name="${entry##*/}" '$1 == name { print $2 }' "$here/projects")
        printf '%5s --------------e------- %s\\n' "${id:-0}" "$entry"
    done
fi
"""


@dataclass
class QuotaNode:
    """The stand-in tools and mount table of one obdsnap server."""

    tools: Path
    mountinfo: Path
    obd: Obd | None = None

    def write_tools(self) -> None:
        self.tools.mkdir()
        (self.tools / "projects").write_text("")
        for tool in ("lsattr", "chattr", "setquota"):
            (self.tools / tool).write_text(STAND_IN)
            (self.tools / tool).chmod(0o755)

    def mark_root(self, *, prjquota: bool) -> None:
        """The mount table: ``/`` without quota, obdsnap's root a mount of its own."""
        assert self.obd is not None
        options = "rw,prjquota" if prjquota else "rw,usrquota"
        self.mountinfo.write_text(
            "21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            f"95 21 8:2 / {self.obd.root} rw,relatime shared:40 - ext4 /dev/sdb1 {options}\n"
        )

    def calls(self) -> list[list[str]]:
        log = self.tools / "calls"
        return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []

    def tool_calls(self, tool: str) -> list[list[str]]:
        return [call[1:] for call in self.calls() if call[0] == tool]

    def fail(self, tool: str, stderr: str) -> None:
        (self.tools / f"{tool}.fails").write_text(stderr)

    def set_project(self, name: str, project: int) -> None:
        with (self.tools / "projects").open("a") as table:
            table.write(f"{name} {project}\n")


StartQuota = Callable[..., Awaitable[tuple[Obd, QuotaNode]]]


@pytest.fixture
def start_quota(start_obd: StartObd, tmp_path: Path) -> StartQuota:
    """obdsnap on the stand-in tools, its root marked ``prjquota`` unless told otherwise."""

    async def start(*, prjquota: bool = True, **settings: object) -> tuple[Obd, QuotaNode]:
        node = QuotaNode(tmp_path / "tools", tmp_path / "mounts")
        node.write_tools()
        node.obd = await start_obd(
            quotaToolDir=str(node.tools), quotaMountinfo=str(node.mountinfo), **settings
        )
        node.mark_root(prjquota=prjquota)
        return node.obd, node

    return start


async def base_layer(obd: Obd) -> str:
    """A committed plain layer to stack a container on (an unpack: it gets no quota)."""
    await obd.prepare("extract-base", labels={L.TARGET_SNAPSHOT_REF: "base"})
    await obd.commit("base", "extract-base")
    return "base"


def assert_quota_calls(node: QuotaNode, obd: Obd, names: list[str], kilobytes: int) -> None:
    """lsattr, chattr and setquota ran for ``names`` of one new-* directory, in that order."""
    calls = node.calls()
    new_dir = calls[0][2]
    assert NEW_DIR.search(new_dir), calls
    expected = []
    for name in names:
        expected += [
            ["lsattr", "-p", new_dir],
            ["chattr", "-p", PROJECT, "+P", f"{new_dir}/{name}"],
            ["setquota", "-P", PROJECT, "0", str(kilobytes), "0", "0", str(obd.root)],
        ]
    assert calls == expected
    assert not Path(new_dir).exists()  # renamed to the snapshot's ID after the quota


async def assert_undone(obd: Obd, key: str) -> None:
    """A failed create leaves no row and no directory, and the key can be used again."""
    await expect_status(obd.stat(key), Status.NOT_FOUND)
    assert not list((obd.root / "snapshots").glob("new-*"))
    rows = await obd.list_infos()
    assert key not in {info.name for info in rows}
    assert len(obd.ids()) == len(rows)  # a directory for each row, none more


async def test_s16_rootfs_quota_on_fs(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16 steps 2-6: lsattr, chattr and setquota on a rootfs's fs/ (no parent)."""
    obd, node = await start_quota(rootfsQuota="10m")
    await obd.prepare("container")
    assert_quota_calls(node, obd, ["fs"], 10 * 1024)
    assert obd.ids() == {1}


async def test_s16_work_dir_gets_quota_with_a_parent(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16 / §5: fs/, then work/ when there is a parent, in the new-* directory."""
    obd, node = await start_quota(rootfsQuota="1.5g")
    parent = await base_layer(obd)
    await obd.prepare("container", parent)
    assert_quota_calls(node, obd, ["fs", "work"], 1536 * 1024)


async def test_s16_quota_in_dir_rw_mode(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16: any rwMode; a rootfs with a writable device of its own gets it too."""
    obd, node = await start_quota(rwMode="dir", rootfsQuota="512MiB")
    await obd.prepare("container")
    assert_quota_calls(node, obd, ["fs"], 512 * 1024)


async def test_s16_label_overrides_config(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16: the disk_quota label wins over rootfsQuota."""
    obd, node = await start_quota(rootfsQuota="10m")
    await obd.prepare("container", labels={L.DISK_QUOTA: "2g"})
    assert_quota_calls(node, obd, ["fs"], 2 * 1024 * 1024)


async def test_s16_label_without_config(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16: the label alone sets a quota; no label and no rootfsQuota sets none."""
    obd, node = await start_quota()
    await obd.prepare("plain")
    assert node.calls() == []
    await obd.prepare("container", labels={L.DISK_QUOTA: "64k"})
    assert_quota_calls(node, obd, ["fs"], 64)


async def test_s16_empty_label_sets_no_quota(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16: size = the label when present, else rootfsQuota; empty = nothing."""
    obd, node = await start_quota(rootfsQuota="10m")
    await obd.prepare("container", labels={L.DISK_QUOTA: ""})
    assert node.calls() == []


async def test_s16_only_rootfs_snapshots(start_quota: StartQuota) -> None:
    """DESIGN-v1 §5: unpacks (snapshot.ref or extract- key) and type=image get no quota."""
    obd, node = await start_quota(rootfsQuota="10m")
    await obd.prepare("unpack", labels={L.TARGET_SNAPSHOT_REF: "layer", L.DISK_QUOTA: "1g"})
    await obd.prepare("extract-1 sha256:aa", labels={L.DISK_QUOTA: "bad size"})
    await obd.prepare("image-layer", labels={L.SNAPSHOT_TYPE: L.SNAPSHOT_TYPE_IMAGE})
    assert node.calls() == []


async def test_s22_q10_view_gets_quota_on_fs_only(start_quota: StartQuota) -> None:
    """DESIGN-v1 §22 quirk 10: a view with a parent gets fs/ only (Go fails it on work/)."""
    obd, node = await start_quota(rootfsQuota="10m")
    parent = await base_layer(obd)
    await obd.view("view", parent)
    assert_quota_calls(node, obd, ["fs"], 10 * 1024)


async def test_s22_q10_project_id_from_config(start_quota: StartQuota) -> None:
    """DESIGN-v1 §22 quirk 10: quotaProjectId names the project; a dir already in it is fine."""
    obd, node = await start_quota(rootfsQuota="1m", quotaProjectId=4242)
    node.set_project("fs", 4242)
    await obd.prepare("container")
    assert node.tool_calls("chattr")[0][:3] == ["-p", "4242", "+P"]
    assert node.tool_calls("setquota") == [["-P", "4242", "0", "1024", "0", "0", str(obd.root)]]


async def test_s16_project_id_already_set(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16 step 2: a dir in another project: `quota id is already set`."""
    obd, node = await start_quota(rootfsQuota="1m")
    node.set_project("fs", 77)
    error = await expect_status(obd.prepare("container"), Status.FAILED_PRECONDITION)
    assert error.message == (
        "failed to set diskquota on upperpath, snapshot id: 1: "
        "quota id is already set, quota id: 77"
    )
    assert node.tool_calls("chattr") == []
    await assert_undone(obd, "container")


async def test_s16_project_id_already_set_on_work(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16 step 2 on work/: the error names the workpath."""
    obd, node = await start_quota(rootfsQuota="1m")
    parent = await base_layer(obd)
    node.set_project("work", 5)
    error = await expect_status(obd.prepare("container", parent), Status.FAILED_PRECONDITION)
    assert error.message == (
        "failed to set diskquota on workpath, snapshot id: 2: quota id is already set, quota id: 5"
    )
    assert len(node.tool_calls("chattr")) == 1  # fs/ was done before work/
    await assert_undone(obd, "container")


async def test_s16_mount_without_prjquota(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16 step 3: the mount holding the dir must have prjquota."""
    obd, node = await start_quota(prjquota=False, rootfsQuota="1m")
    error = await expect_status(obd.prepare("container"), Status.FAILED_PRECONDITION)
    assert error.message == (
        f"failed to set diskquota on upperpath, snapshot id: 1: "
        f"mountpoint: ({obd.root}) not enable prjquota"
    )
    assert [call[0] for call in node.calls()] == ["lsattr"]
    await assert_undone(obd, "container")


async def test_s16_bad_label_size_is_invalid_argument(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16 step 4: a bad disk_quota label is refused at Prepare, before any change."""
    obd, node = await start_quota()
    error = await expect_status(
        obd.prepare("container", labels={L.DISK_QUOTA: "ten gigs"}), Status.INVALID_ARGUMENT
    )
    assert error.message == (
        f"label {L.DISK_QUOTA}: failed to change size: (ten gigs) to kilobytes: "
        "invalid size: 'ten gigs'"
    )
    assert node.calls() == []
    assert obd.ids() == set()
    await assert_undone(obd, "container")


def test_s16_bad_config_size_is_refused_at_start(tmp_path: Path) -> None:
    """DESIGN-v1 §16 step 4 / §22: a bad rootfsQuota stops start-up (Go fails each Prepare)."""
    config = tmp_path / "config.json"
    config.write_text('{"rootfsQuota": "12 parsecs"}')
    done = subprocess.run(
        [sys.executable, "-m", "obdsnap", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "config: \"rootfsQuota\": invalid size: '12 parsecs'" in done.stderr


async def test_s16_limit_larger_than_the_filesystem(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16 step 5: the quota may not exceed the filesystem (statfs of the mount)."""
    obd, node = await start_quota(rootfsQuota="1p")
    fs = os.statvfs(obd.root)
    error = await expect_status(obd.prepare("container"), Status.FAILED_PRECONDITION)
    assert error.message == (
        f"failed to set diskquota on upperpath, snapshot id: 1: dir {obd.root} quota limit "
        f"{1 << 50} must be less than {fs.f_blocks * fs.f_bsize}"
    )
    assert node.tool_calls("chattr") == []
    await assert_undone(obd, "container")


@pytest.mark.parametrize("tool", ["chattr", "setquota", "lsattr"])
async def test_s16_tool_failure(start_quota: StartQuota, tool: str) -> None:
    """DESIGN-v1 §16 step 2/6: a failing tool fails the Prepare (UNKNOWN), its stderr told."""
    obd, node = await start_quota(rootfsQuota="1m")
    stderr = f"{tool}: Operation not supported while doing the thing"
    node.fail(tool, stderr)
    error = await expect_status(obd.prepare("container"), Status.UNKNOWN)
    prefix = f"failed to set diskquota on upperpath, snapshot id: 1: {node.tools / tool} "
    expected = re.escape(prefix) + r"-\S.* failed \(exit 1\): " + re.escape(stderr)
    assert re.fullmatch(expected, error.message or ""), error.message
    await assert_undone(obd, "container")


async def test_s16_failed_create_is_undone_and_key_reusable(start_quota: StartQuota) -> None:
    """DESIGN-v1 §16: on a quota error the create is undone; the same key prepares later."""
    obd, node = await start_quota(rootfsQuota="1m")
    parent = await base_layer(obd)
    node.fail("setquota", "setquota: no quota on this filesystem")
    await expect_status(obd.prepare("container", parent), Status.UNKNOWN)
    await assert_undone(obd, "container")
    assert obd.ids() == {1}
    (node.tools / "setquota.fails").unlink()
    await obd.prepare("container", parent)
    assert (await obd.stat("container")).parent == parent
    assert obd.ids() == {1, 3}  # the failed create's ID is never handed out again
