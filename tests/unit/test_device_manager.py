"""DeviceManager in-process: ownership, the attach undo path at each step, intents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.fake_devices import BACKEND_STEPS, OTHER_OWNER, FakeDeviceBackend, FakeMounter

from obdsnap.blocking import BlockingRunner
from obdsnap.device.backend import AttachError, DeviceTimeout, OpenFailed
from obdsnap.device.filesystem import FsSpec
from obdsnap.device.manager import DeviceManager, MountMode
from obdsnap.errors import SnapshotError
from obdsnap.layout import Layout
from obdsnap.storage import Intent, MetaStore, Operation

ID = 5
NOW = datetime.now(UTC)


class Recorder:
    def __init__(self) -> None:
        self.attached_seconds: list[float] = []
        self.failures: list[Exception] = []

    def attached(self, seconds: float) -> None:
        self.attached_seconds.append(seconds)

    def attach_failed(self, error: Exception) -> None:
        self.failures.append(error)


class Node:
    def __init__(self, tmp_path: Path, store: MetaStore) -> None:
        self.layout = Layout(tmp_path / "root")
        self.layout.create_root()
        self.store = store
        self.backend = FakeDeviceBackend()
        self.mounter = FakeMounter(self.backend)
        self.observer = Recorder()
        self.devices = DeviceManager(
            self.backend, self.layout, self.mounter, BlockingRunner(), store, 2, self.observer
        )

    def make_snapshot_dir(self, snapshot_id: int = ID) -> None:
        new = self.layout.snapshots / "new-x"
        self.layout.build_new_snapshot_dir(new, active=True, parent_id=None)
        new.rename(self.layout.snapshot_dir(snapshot_id))
        self.layout.block(snapshot_id).config.write_text("{}")

    @property
    def mountpoint(self) -> Path:
        return self.layout.block(ID).mountpoint

    def nothing_set_up(self) -> bool:
        return (
            not self.backend.devices
            and not self.mounter.table
            and not self.layout.block(ID).mark.exists()
        )


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    store = MetaStore(tmp_path / "metadata.db")
    await store.open()
    made = Node(tmp_path, store)
    made.make_snapshot_dir()
    yield made
    await store.close()


async def test_attach_sets_up_makes_a_filesystem_mounts_and_marks(node: Node) -> None:
    device = await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_WRITE)
    assert device == node.backend.node(ID)
    assert node.mounter.filesystems == {device: "ext4"}
    assert node.mounter.mounted_source(node.mountpoint) == str(device)
    assert node.layout.block(ID).mark.read_text() == str(device)
    assert await node.devices.owns(ID) and await node.devices.is_marked(ID)
    assert len(node.observer.attached_seconds) == 1 and node.store.intents() == []
    # Done already: no second set-up, no second mkfs.
    again = await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_WRITE)
    assert again == device and node.backend.attaches == [ID]


async def test_a_device_that_lost_its_mount_is_mounted_again_without_mkfs(node: Node) -> None:
    device = await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_ONLY)
    await node.mounter.unmount(node.mountpoint)
    node.mounter.filesystems.clear()
    assert await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_ONLY) == device
    assert node.mounter.filesystems == {} and node.backend.attaches == [ID]
    assert node.mounter.table[-1].options == "ro"


async def test_an_unmounted_device_mode_is_set_up_and_marked_without_a_mount(node: Node) -> None:
    device = await node.devices.attach(ID, FsSpec(), mkfs=False, mode=MountMode.NONE)
    assert node.mounter.table == [] and await node.devices.is_marked(ID)
    assert await node.devices.attach(ID, FsSpec(), mkfs=False, mode=MountMode.NONE) == device


@pytest.mark.parametrize("step", [*BACKEND_STEPS, "mkfs", "mount"])
async def test_a_failed_attach_leaves_nothing_set_up_or_mounted(node: Node, step: str) -> None:
    if step in BACKEND_STEPS:
        node.backend.fail_at(step, "no such blob")
    else:
        node.mounter.fail_at(step, "bad superblock")
    with pytest.raises(SnapshotError) as raised:
        await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_WRITE)
    assert node.nothing_set_up(), (node.backend.devices, node.mounter.table)
    assert node.store.intents() == []
    assert node.observer.failures and node.observer.attached_seconds == []
    assert raised.value.snapshot_id == ID
    # The next attach starts afresh and works.
    await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_WRITE)
    assert await node.devices.is_marked(ID)


async def test_a_failed_open_says_overlaybds_reason(node: Node) -> None:
    node.backend.fail_at("open", "failed to open blob sha256:1")
    with pytest.raises(OpenFailed) as raised:
        await node.devices.attach(ID, FsSpec(), mkfs=False, mode=MountMode.READ_ONLY)
    assert raised.value.reason == "failed to open blob sha256:1"
    assert node.layout.block(ID).result_file.read_text() == "failed:failed to open blob sha256:1"


async def test_a_disk_that_never_appears_is_a_timeout(node: Node) -> None:
    node.backend.fail_at("disk")
    with pytest.raises(DeviceTimeout):
        await node.devices.attach(ID, FsSpec(), mkfs=False, mode=MountMode.READ_ONLY)
    assert node.nothing_set_up()


async def test_ownership_ours_anothers_and_not_configured_yet(node: Node) -> None:
    assert not await node.devices.owns(ID) and await node.devices.may_own(ID)
    node.backend.leave_half_set_up(ID)
    assert not await node.devices.owns(ID) and await node.devices.may_own(ID)
    node.backend.leave_half_set_up(ID, owner=node.backend.owner_token(node.layout.block(ID)))
    assert await node.devices.owns(ID) and await node.devices.may_own(ID)
    node.backend.set_up_by_other(ID)
    assert not await node.devices.owns(ID) and not await node.devices.may_own(ID)


async def test_another_snapshotters_device_is_refused_and_never_torn_down(node: Node) -> None:
    node.backend.set_up_by_other(ID)
    with pytest.raises(AttachError) as raised:
        await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_WRITE)
    assert str(raised.value) == (
        f"fake device {ID} is set up for another image ({OTHER_OWNER}): "
        "is another snapshotter using this host's devices?"
    )
    await node.devices.detach(ID)
    assert node.backend.devices[ID].owner == OTHER_OWNER and node.backend.detaches == []
    assert node.mounter.flushed == []


async def test_a_half_set_up_device_is_torn_down_and_set_up_afresh(node: Node) -> None:
    node.backend.leave_half_set_up(ID)
    device = await node.devices.attach(ID, FsSpec(), mkfs=False, mode=MountMode.READ_ONLY)
    assert node.backend.detaches == [ID] and node.backend.attaches == [ID]
    assert node.mounter.mounted_source(node.mountpoint) == str(device)


async def test_detach_flushes_unmounts_tears_down_and_unmarks(node: Node) -> None:
    device = await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_WRITE)
    await node.devices.detach(ID)
    assert node.mounter.flushed == [device]
    assert node.nothing_set_up() and node.store.intents() == []
    await node.devices.detach(ID)  # nothing there: fine
    assert node.backend.detaches == [ID]


async def test_reconcile_keeps_an_attach_that_reached_its_mark(node: Node) -> None:
    await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_WRITE)
    outcome = await node.devices.reconcile(Intent(ID, Operation.ATTACH, NOW))
    assert outcome == "kept: it had finished"
    assert node.mounter.is_mounted(node.mountpoint) and await node.devices.is_marked(ID)


async def test_reconcile_rolls_back_an_attach_cut_before_its_mark(node: Node) -> None:
    device = node.backend.node(ID)
    node.backend.leave_half_set_up(ID, owner=node.backend.owner_token(node.layout.block(ID)))
    node.backend.devices[ID].node = device
    node.mounter.add_mount(str(device), node.mountpoint)
    outcome = await node.devices.reconcile(Intent(ID, Operation.ATTACH, NOW))
    assert outcome == "rolled back" and node.nothing_set_up()


async def test_reconcile_finishes_a_detach(node: Node) -> None:
    await node.devices.attach(ID, FsSpec(), mkfs=True, mode=MountMode.READ_WRITE)
    await node.mounter.unmount(node.mountpoint)  # the detach got past its unmount
    assert await node.devices.reconcile(Intent(ID, Operation.DETACH, NOW)) == "finished"
    assert node.nothing_set_up()


async def test_attached_ids_and_describe_come_from_the_backend(node: Node) -> None:
    node.backend.set_up_by_other(9)
    node.backend.leave_half_set_up(3)
    assert await node.devices.attached_ids() == {3, 9}
    assert node.devices.describe(3) == "fake device 3"
