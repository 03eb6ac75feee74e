"""The snapshotter in-process, without root: real metadata, layout and layers; fake devices.

``start_in_process(tmp_path)`` builds what ``obdsnap serve`` builds (a real
MetaStore on SQLite, the Layout, BlockLayers running tcmusim's stand-ins of
overlaybd-create and overlaybd-commit, a DeviceManager and the Snapshotter),
with ``FakeDeviceBackend`` and ``FakeMounter`` in place of TCMU and mount(8).
``restart`` is a crash and a new start on the same root: the metadata is what
was committed, the devices and mounts are as the process left them.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.device.manager import DeviceManager
from obdsnap.layout import Layout
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.overlaybd.tools import OverlaybdTools
from obdsnap.snapshotter import ReconcileReport, Snapshotter, SnapshotterOptions
from obdsnap.storage import MetaStore, Operation
from support.fake_devices import FakeDeviceBackend, FakeMounter
from tcmusim import tools as standins

MAX_ATTACHING = 4


def remote_layer_labels(target: str, digest: str, size: int, image: str) -> dict[str, str]:
    """The labels containerd's unpacker puts on an overlaybd (remote) layer's Prepare."""
    return {
        L.TARGET_SNAPSHOT_REF: target,
        L.BLOB_DIGEST: digest,
        L.BLOB_SIZE: str(size),
        L.IMAGE_REF: image,
    }


@dataclass
class InProcess:
    layout: Layout
    store: MetaStore
    layers: BlockLayers
    backend: FakeDeviceBackend
    mounter: FakeMounter
    devices: DeviceManager
    snapshotter: Snapshotter
    options: SnapshotterOptions
    tools: OverlaybdTools
    blocking: BlockingRunner
    report: ReconcileReport | None = None
    # Operations a crash cut short, held: a dropped one would clear its intent when collected.
    cut_short: list[AbstractAsyncContextManager[None]] = field(default_factory=list)

    async def restart(self, options: SnapshotterOptions | None = None) -> ReconcileReport:
        """The process dies and starts again: devices and mounts stay, the rest is rebuilt."""
        await self.crash()
        fresh = await _build(
            self.layout, self.backend, self.mounter, self.tools, options or self.options
        )
        fresh.cut_short = self.cut_short
        self.__dict__.update(fresh.__dict__)
        self.report = await self.snapshotter.start()
        return self.report

    async def crash(self) -> None:
        """What survives a crash: committed metadata (open intents stay open)."""
        await self.snapshotter.close()  # its background remover; no call is running
        await self.store.close()

    async def close(self) -> None:
        await self.snapshotter.close()
        await self.store.close()

    def open_intent(
        self, snapshot_id: int, operation: Operation
    ) -> AbstractAsyncContextManager[None]:
        """The intent an operation records first; entered and never left, it is a crash."""
        intent = self.store.intent(snapshot_id, operation)
        self.cut_short.append(intent)
        return intent

    def id_of(self, key: str) -> int:
        return self.store.get(key).id


async def start_in_process(
    tmp_path: Path, options: SnapshotterOptions | None = None, *, start: bool = True
) -> InProcess:
    """A started snapshotter on ``tmp_path/root`` (the stand-in tools in ``tmp_path/bin``)."""
    bin_dir = tmp_path / "bin"
    standins.install(bin_dir)
    layout = Layout(tmp_path / "root")
    layout.create_root()
    backend = FakeDeviceBackend()
    tools = OverlaybdTools(bin_dir)
    options = options or SnapshotterOptions()
    built = await _build(layout, backend, FakeMounter(backend), tools, options)
    if start:
        built.report = await built.snapshotter.start()
    return built


async def _build(
    layout: Layout,
    backend: FakeDeviceBackend,
    mounter: FakeMounter,
    tools: OverlaybdTools,
    options: SnapshotterOptions,
) -> InProcess:
    blocking = BlockingRunner()
    store = MetaStore(layout.metadata_db)
    await store.open()
    layers = BlockLayers(layout, tools, blocking, sparse=False)
    devices = DeviceManager(backend, layout, mounter, blocking, store, MAX_ATTACHING)
    snapshotter = Snapshotter(layout, store, layers, devices, mounter, options, blocking)
    return InProcess(
        layout, store, layers, backend, mounter, devices, snapshotter, options, tools, blocking
    )
