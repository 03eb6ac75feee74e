"""DESIGN-v1 §15 (and §11 naming): several snapshotters on one host, told apart by ``tenant``.

Each server has its own root, so each numbers its snapshots from 1: the same IDs
are attached at once, on one simulator, under each tenant's HBA and WWN prefix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from grpclib.const import Status
from support.attacher import obdsnap_device_command
from support.block import Obd
from support.block_fixtures import Images, StartObd, write_synced
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap.device.tcmu_names import TcmuNames
from obdsnap.labels import WRITABLE

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


@pytest.mark.parametrize(
    ("tenant", "hba", "wwn_of_12"),
    [
        (-1, "user_999999999", "naa.1990000000000012"),
        (0, "user_0", "naa.1000000000000012"),
        (7, "user_7", "naa.1070000000000012"),
        (99, "user_99", "naa.1990000000000012"),
        (107, "user_107", "naa.1070000000000012"),
        (1234, "user_1234", "naa.1340000000000012"),
    ],
)
def test_s11_tenant_names_the_hba_and_the_wwn(tenant: int, hba: str, wwn_of_12: str) -> None:
    """DESIGN-v1 §11 naming: HBA user_<tenant or 999999999>, WWN naa.<tenant%100+100 or 199>."""
    names = TcmuNames(tenant)
    assert names.hba == hba and names.wwn(12) == wwn_of_12


def configfs_path(obd: Obd, *parts: str) -> Path:
    return obd.sim.configfs.joinpath("target", *parts)


async def writable_rootfs(obd: Obd, files: dict[str, str]) -> int:
    """A ``dir``-mode rootfs ``rootfs`` holding ``files``; its ID."""
    mounts = await obd.prepare("rootfs")
    snapshot_id = obd.own_id(mounts)
    write_synced(obd.mountpoint(snapshot_id), files)
    return snapshot_id


async def test_s15_two_tenants_attach_the_same_id_each_serving_its_own_data(
    start_obd: StartObd,
) -> None:
    """DESIGN-v1 §15: two snapshotters (tenants -1 and 7) attach snapshot 1 at once."""
    plain = await start_obd(rwMode="dir")
    seventh = await start_obd(rwMode="dir", tenant=7)
    assert await writable_rootfs(plain, {"who": "no tenant\n"}) == 1
    assert await writable_rootfs(seventh, {"who": "tenant 7\n"}) == 1

    # Tenant -1 keeps the names of a snapshotter without tenants.
    plain_target = configfs_path(plain, "core/user_999999999/dev_1")
    seventh_target = configfs_path(seventh, "core/user_7/dev_1")
    for obd, target, wwn in (
        (plain, plain_target, "naa.1990000000000001"),
        (seventh, seventh_target, "naa.1070000000000001"),
    ):
        assert f"Config: overlaybd/{obd.config_path(1)} " in (target / "info").read_text()
        tpg = configfs_path(obd, "loopback", wwn, "tpgt_1")
        assert (tpg / "nexus").read_text().strip() == wwn
        link = tpg / "lun/lun_0/dev_1"
        assert os.readlink(link) == f"../../../../../core/{target.parent.name}/dev_1"
    assert plain.assert_attached(1, mounted="rw") != seventh.assert_attached(1, mounted="rw")

    # Through each device: committed, then read by a child on a device of its own (ID 2).
    for obd, who in ((plain, "no tenant\n"), (seventh, "tenant 7\n")):
        await obd.commit("layer", "rootfs")
        child = await obd.prepare("child", "layer", {WRITABLE: "dir"})
        assert obd.own_id(child) == 2
        assert (Path(child[0].source) / "who").read_text() == who
    assert (configfs_path(plain, "core/user_999999999/dev_2")).is_dir()
    assert (configfs_path(seventh, "core/user_7/dev_2")).is_dir()


async def test_s15_restart_and_cleanup_of_one_tenant_leave_the_others_devices(
    start_obd: StartObd,
) -> None:
    """DESIGN-v1 §15: start-up reconcile and Cleanup list, claim and release their own only."""
    third = await start_obd(rwMode="dir", tenant=3)
    seventh = await start_obd(rwMode="dir", tenant=7)
    await writable_rootfs(third, {"who": "tenant 3\n"})
    await writable_rootfs(seventh, {"who": "tenant 7\n"})
    # Snapshot 2 exists for tenant 3 only: tenant 7 knows no snapshot 2.
    extra = await third.prepare("extra")
    assert third.own_id(extra) == 2

    await seventh.restart(kill=True)
    await seventh.cleanup()
    for snapshot_id in (1, 2):
        third.assert_attached(snapshot_id, mounted="rw")
    assert (third.mountpoint(1) / "who").read_text() == "tenant 3\n"
    seventh.assert_attached(1, mounted="rw")

    await third.restart(kill=False)
    await third.cleanup()
    await third.remove("extra")
    third.assert_detached(2)
    seventh.assert_attached(1, mounted="rw")
    assert (seventh.mountpoint(1) / "who").read_text() == "tenant 7\n"
    assert configfs_path(seventh, "loopback/naa.1070000000000001").is_dir()


async def test_s22_q14_tenants_100_apart_collide_without_harm_and_are_warned_of(
    start_obd: StartObd,
) -> None:
    """DESIGN-v1 §22 quirk 14: tenants 7 and 107 share WWNs (as in Go); a warning at start."""
    seventh = await start_obd(rwMode="dir", tenant=7)
    await writable_rootfs(seventh, {"who": "tenant 7\n"})
    other = await start_obd(rwMode="dir", tenant=107)
    assert "tenant 107: its devices' WWNs start naa.107" in other.server.log()
    error = await expect_status(other.prepare("rootfs"), Status.UNKNOWN)
    assert "loopback naa.1070000000000001 is taken by a device of another HBA" in (
        error.message or ""
    )
    assert not configfs_path(other, "core/user_107/dev_1").exists()
    seventh.assert_attached(1, mounted="rw")
    assert (seventh.mountpoint(1) / "who").read_text() == "tenant 7\n"


async def test_s15_cleanup_releases_its_own_orphan_device_not_another_tenants(
    start_obd: StartObd, images: Images
) -> None:
    """DESIGN-v1 §15: Cleanup lists its tenant's HBA only, even for a device naming its root."""
    seventh = await start_obd(tenant=7)
    plain = await start_obd()
    _, top = await seventh.unpack_top(images.single)
    # Devices for snapshot 5, which tenant 7 does not have: set up by hand, in both HBAs,
    # from a config where tenant 7's snapshot 5 would keep it.
    orphan = seventh.config_path(5)
    orphan.parent.mkdir(parents=True)
    document = seventh.config(top)
    document["resultFile"] = str(orphan.parent / "init-debug.log")
    orphan.write_text(json.dumps(document))
    for tenant in ("7", "-1"):
        attach = ("attach", "--id", "5", "--config", str(orphan), "--tenant", tenant)
        attached = await obdsnap_device_command(seventh, *attach)
        assert attached.returncode == 0, attached.stderr
    assert seventh.configfs_entries(5) and plain.configfs_entries(5)

    await seventh.cleanup()
    assert seventh.configfs_entries(5) == []
    assert not seventh.snapshot_dir(5).exists()
    assert [path.name for path in plain.configfs_entries(5)] == ["dev_5", "naa.1990000000000005"]
    assert plain.device_of(5) is not None

    refused = await obdsnap_device_command(plain, "detach", "--id", "5")
    assert refused.returncode == 1 and "pass --force" in refused.stderr
    forced = await obdsnap_device_command(plain, "detach", "--id", "5", "--force")
    assert forced.returncode == 0, forced.stderr
    assert plain.configfs_entries(5) == []
