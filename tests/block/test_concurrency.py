"""Concurrency: attaches overlap, slow devices stall no one, Mounts and Remove never race.

DESIGN: blocking device work never runs on the event loop thread, and a slow
device for one container must never stall Stat/List/Prepare for others.
Mounts and Remove of a snapshot take a lock on its ID and then on its
parent's, so the two never race.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest
from grpclib import GRPCError
from grpclib.const import Status
from support.block import Obd, remote_labels
from support.block_fixtures import Images, StartObd
from support.mounts import mount_at
from support.simulator import MISSING
from support.snapshots import expect_status, wait_until

from obdsnap.labels import WRITABLE
from tcmusim.testing import only

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

OPEN_LATENCY = 0.1
# Long enough that 100 serial opens (30 s) stand far apart from overlapped ones
# (4 turns of the device cap, plus the CPU of 100 attaches on a slow machine).
STORM_OPEN_LATENCY = 0.3


async def remote_images(obd: Obd, images: Images, count: int) -> list[tuple[str, int]]:
    """``count`` one-layer overlaybd images (the same blob): (chain ID, snapshot ID) each."""
    layer = images.single.layers[0]
    made = []
    for index in range(count):
        chain_id = f"sha256:{index + 1:064x}"
        labels = remote_labels(chain_id, layer, images.single.ref)
        await expect_status(
            obd.prepare(f"extract-{index} {chain_id}", "", labels), Status.ALREADY_EXISTS
        )
        made.append((chain_id, obd.latest_id()))
    return made


async def test_concurrent_container_starts_attach_their_devices_in_parallel(
    start_obd: StartObd, images: Images
) -> None:
    """100 containers on 100 images: their device opens (300 ms each) overlap."""
    count = 100
    obd = await start_obd()
    parents = await remote_images(obd, images, count)
    obd.sim.control.set(open_latency=STORM_OPEN_LATENCY)

    started = time.monotonic()
    results = await asyncio.gather(
        *(obd.prepare(f"container-{i}", chain) for i, (chain, _) in enumerate(parents)),
        return_exceptions=True,
    )
    wall = time.monotonic() - started
    errors = [result for result in results if isinstance(result, BaseException)]
    assert errors == []
    serial = count * STORM_OPEN_LATENCY
    assert wall < 0.5 * serial, f"{count} attaches took {wall:.2f}s, serially {serial:.1f}s"
    devices = {obd.assert_attached(parent_id, mounted="ro") for _, parent_id in parents}
    assert len(devices) == count


async def test_device_opens_beyond_the_cap_wait_their_turn(
    start_obd: StartObd, images: Images
) -> None:
    """maxConcurrentDeviceOps 2: six opens of 0.3 s each take three turns, and all succeed.

    A lower bound, so timing noise cannot make it pass wrongly: without the cap the
    six opens overlap and finish in one turn.
    """
    obd = await start_obd(maxConcurrentDeviceOps=2)
    parents = await remote_images(obd, images, 6)
    obd.sim.control.set(open_latency=0.3)
    started = time.monotonic()
    await asyncio.gather(
        *(obd.prepare(f"container-{i}", chain) for i, (chain, _) in enumerate(parents))
    )
    wall = time.monotonic() - started
    assert wall >= 3 * 0.3 * 0.95, f"6 opens with a cap of 2 took only {wall:.2f}s"
    for _, parent_id in parents:
        obd.assert_attached(parent_id, mounted="ro")


async def test_concurrent_unpacks_of_one_remote_layer_commit_it_once(
    obd: Obd, images: Images
) -> None:
    """Two pulls of one image at once: every Prepare answers ALREADY_EXISTS, one snapshot."""
    chain_id, labels = images.single.layer_labels()
    await asyncio.gather(
        *(
            expect_status(obd.prepare(f"extract-{i} {chain_id}", "", labels), Status.ALREADY_EXISTS)
            for i in range(10)
        )
    )
    infos = await obd.list_infos()
    assert [(info.name, info.kind.name) for info in infos] == [(chain_id, "COMMITTED")]
    # The losers' directories go; the winner's device config stays.
    assert await wait_until(lambda: len(obd.ids()) == 1)
    [winner] = obd.ids()
    assert obd.config(winner)["lowers"][0]["digest"] == images.single.layers[0].digest
    await obd.prepare("rootfs", chain_id)
    obd.assert_attached(winner, mounted="ro")


async def test_concurrent_prepares_of_containers_on_one_image_attach_it_once(
    obd: Obd, images: Images
) -> None:
    [(chain, parent_id)] = await remote_images(obd, images, 1)
    obd.sim.control.set(open_latency=OPEN_LATENCY)
    log_start = len(obd.sim.log())
    answers = await asyncio.gather(*(obd.prepare(f"c{i}", chain) for i in range(20)))
    lowers = {mount.options[-1] for mounts in answers for mount in mounts}
    assert lowers == {f"lowerdir={obd.mountpoint(parent_id)}"}
    obd.assert_attached(parent_id, mounted="ro")
    assert len(obd.sim.loop_devices()) == 1
    assert obd.sim.log()[log_start:].count(f"dev_{parent_id}: enabled on") == 1


async def test_slow_devices_do_not_stall_other_prepares(
    start_obd: StartObd, images: Images
) -> None:
    slow_latency = 2.0
    # One more slow device than the default executor has threads.
    count = min(32, (os.cpu_count() or 1) + 4) + 1
    obd = await start_obd()
    parents = await remote_images(obd, images, count)
    obd.sim.control.set(open_latency=only(slow_latency, *(i for _, i in parents)))
    slow = [
        asyncio.ensure_future(obd.prepare(f"slow-{i}", chain))
        for i, (chain, _) in enumerate(parents)
    ]
    try:
        await asyncio.sleep(0.5)  # every slow device is in its open now
        started = time.monotonic()
        await obd.stat(parents[0][0])
        await obd.list_infos()
        await obd.prepare("plain")  # no device: a directory and a row
        elapsed = time.monotonic() - started
    finally:
        await asyncio.gather(*slow, return_exceptions=True)
    assert elapsed < 0.5, f"Stat/List/Prepare waited {elapsed:.2f}s for slow devices"


async def test_concurrent_mounts_and_removes_on_one_device_are_safe(
    obd: Obd, images: Images
) -> None:
    [(chain, parent_id)] = await remote_images(obd, images, 1)
    children = [f"child-{i}" for i in range(20)]
    for child in children:
        await obd.prepare(child, chain)
    obd.detach_like_reboot(parent_id)  # every Mounts below wants the device back
    obd.sim.control.set(open_latency=0.05)

    rng = random.Random(7)
    calls: list[tuple[str, str]] = [("mounts", rng.choice(children)) for _ in range(100)]
    calls += [("remove", child) for child in children]
    rng.shuffle(calls)

    async def call(kind: str, key: str) -> None:
        await asyncio.sleep(rng.random() * 0.2)
        if kind == "mounts":
            await obd.mounts(key)
        else:
            await obd.remove(key)

    results = await asyncio.gather(*(call(k, key) for k, key in calls), return_exceptions=True)
    unexpected = [
        result
        for result in results
        if isinstance(result, BaseException)
        and not (isinstance(result, GRPCError) and result.status == Status.NOT_FOUND)
    ]
    assert unexpected == []
    assert {info.name for info in await obd.list_infos()} == {chain}

    # The parent's device is wholly attached (mark, configfs, mount) or wholly not.
    if obd.mark(parent_id) is None:
        obd.assert_detached(parent_id)
    else:
        obd.assert_attached(parent_id, mounted="ro")
    assert len(obd.sim.loop_devices()) <= 1
    await obd.remove(chain)
    obd.assert_detached(parent_id)
    assert obd.sim.loop_devices() == []


@pytest.mark.parametrize("owner", ["parent-of-overlayfs", "own-dir-device"])
async def test_mounts_queued_behind_remove_is_not_found_and_attaches_nothing(
    start_obd: StartObd, images: Images, owner: str
) -> None:
    obd = await start_obd(autoRemoveDev=True)
    [(chain, parent_id)] = await remote_images(obd, images, 1)
    labels = {WRITABLE: "dir"} if owner == "own-dir-device" else {}
    child = obd.own_id(await obd.prepare("child", chain, labels))
    device_owner = parent_id if owner == "parent-of-overlayfs" else child
    obd.detach_like_reboot(device_owner)
    obd.sim.control.set(open_latency=only(0.5, device_owner))

    first = asyncio.ensure_future(obd.mounts("child"))  # attaching, holds the device's lock
    await asyncio.sleep(0.15)
    removing = asyncio.ensure_future(obd.remove("child"))  # waits for that lock
    await asyncio.sleep(0.15)
    second = asyncio.ensure_future(obd.mounts("child"))  # read "child" before it went
    await first
    await removing
    try:
        await expect_status(second, Status.NOT_FOUND)
    finally:
        await asyncio.gather(second, return_exceptions=True)
    await expect_status(obd.stat("child"), Status.NOT_FOUND)
    assert obd.configfs_entries(device_owner) == []
    assert mount_at(obd.mountpoint(device_owner)) is None
    assert obd.sim.loop_devices() == []
