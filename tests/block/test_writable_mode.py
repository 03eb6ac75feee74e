"""DESIGN §5: the writable mode of a new snapshot (overlayfs, dir or dev).

A plain (non-overlaybd) parent always gives ``overlayfs``. With an overlaybd
parent, or none, the ``overlaybd.writable`` label decides (``dir``/``dev``;
any other value gives ``overlayfs``); without the label, the boot config's
``rwMode``.
"""

from __future__ import annotations

import pytest
from support.block import Obd
from support.block_fixtures import Images, StartObd, WritableRootfs
from support.mounts import mount_options
from support.simulator import MISSING

from obdsnap.genproto.containerd.types import Mount
from obdsnap.labels import WRITABLE

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

NO_LABEL = "no-label"


async def make_parent(obd: Obd, images: Images, kind: str) -> tuple[str, int | None]:
    """A committed parent of ``kind`` (none, plain, block): its name and ID."""
    if kind == "none":
        return "", None
    if kind == "plain":
        # A plain layer even on a dir/dev server: the label asks for overlayfs.
        mounts = await obd.prepare("plain-active", "", {WRITABLE: "overlayfs"})
        plain_id = obd.own_id(mounts)
        (obd.fs(plain_id) / "plain.txt").write_text("plain\n")
        await obd.commit("plain", "plain-active")
        return "plain", plain_id
    chain = await obd.unpack_remote(images.single)
    return chain[-1], obd.latest_id()


def assert_mode(obd: Obd, mounts: list[Mount], mode: str, parent_id: int | None) -> None:
    assert len(mounts) == 1
    mount = mounts[0]
    own = obd.own_id(mounts)
    kind = (mount.type, mount.source, list(mount.options))
    if mode == "dir":
        assert kind == ("bind", str(obd.mountpoint(own)), ["rw", "rbind"])
        obd.assert_attached(own, mounted="rw")
    elif mode == "dev":
        device = obd.assert_attached(own, mounted=None)
        assert kind == ("ext4", device, ["rw", "discard"])
    elif parent_id is None:
        assert kind == ("bind", str(obd.fs(own)), ["rw", "rbind"])
        assert obd.sim.loop_devices() == []
    else:
        assert kind[:2] == ("overlay", "overlay")
        options = mount_options(mount)
        assert options["upperdir"] == str(obd.fs(own))
        if obd.config_path(parent_id).exists():
            assert options["lowerdir"] == str(obd.mountpoint(parent_id))
            obd.assert_attached(parent_id, mounted="ro")
        else:
            assert options["lowerdir"] == str(obd.fs(parent_id))
            assert obd.sim.loop_devices() == []
        obd.assert_detached(own)


CASES = [
    # (boot rwMode, parent, label, expected mode)
    ("overlayfs", "plain", "dir", "overlayfs"),
    ("dir", "plain", NO_LABEL, "overlayfs"),
    ("dev", "plain", "dev", "overlayfs"),
    ("overlayfs", "block", "dir", "dir"),
    ("overlayfs", "block", "dev", "dev"),
    ("dir", "block", "ro", "overlayfs"),
    ("dir", "block", "overlayfs", "overlayfs"),
    ("dev", "block", "dir", "dir"),
    ("overlayfs", "block", NO_LABEL, "overlayfs"),
    ("dir", "block", NO_LABEL, "dir"),
    ("dev", "block", NO_LABEL, "dev"),
    ("overlayfs", "none", "dir", "dir"),
    ("overlayfs", "none", "dev", "dev"),
    ("dir", "none", "yes", "overlayfs"),
    ("overlayfs", "none", NO_LABEL, "overlayfs"),
    ("dir", "none", NO_LABEL, "dir"),
    ("dev", "none", NO_LABEL, "dev"),
]


@pytest.mark.parametrize(
    ("boot_mode", "parent_kind", "label", "expected"),
    CASES,
    ids=[f"boot-{b}-{p}-parent-label-{lbl}" for b, p, lbl, _ in CASES],
)
async def test_writable_mode_resolution(
    start_obd: StartObd,
    images: Images,
    boot_mode: str,
    parent_kind: str,
    label: str,
    expected: str,
) -> None:
    obd = await start_obd(rwMode=boot_mode)
    parent, parent_id = await make_parent(obd, images, parent_kind)
    labels = {} if label == NO_LABEL else {WRITABLE: label}
    mounts = await obd.prepare("rootfs", parent, labels)
    assert_mode(obd, mounts, expected, parent_id)
    # Mounts answers the same, in the same mode.
    assert await obd.mounts("rootfs") == mounts


async def test_fresh_writable_device_without_parent_is_mkfsed(
    writable_rootfs: WritableRootfs,
) -> None:
    """(With no parent, dir gives a fresh writable device that is mkfs'ed: an empty ext4.)

    Empty as containerd expects a snapshot without parent to be: no lost+found either.
    """
    rootfs = await writable_rootfs(files={})
    rootfs.obd.assert_attached(rootfs.id, mounted="rw")
    assert sorted(p.name for p in rootfs.mountpoint.iterdir()) == []
