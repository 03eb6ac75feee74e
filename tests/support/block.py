"""Helpers of the block-device tests: obdsnap on the TCMU simulator, driven over gRPC.

An :class:`Obd` is one obdsnap server process on a running simulator, with a
client and everything a test needs to look at what the server did on disk, in
configfs, in the mount table and among the loop devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status

from obdsnap.config import NO_TENANT
from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.genproto.containerd.types import Mount
from obdsnap.labels import BLOB_DIGEST, BLOB_SIZE, IMAGE_REF, TARGET_SNAPSHOT_REF
from support.mounts import mount, mount_at, mount_options, mounts_under, umount
from support.processes import run
from support.server_process import ServerProcess
from support.simulator import hba, remove_device, wwn
from support.snapshots import expect_status, wait_until
from tcmusim import layerfmt
from tcmusim.testing import RunningSimulator

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_REF = "docker.io/library/obdtest:v1"


# ---------------------------------------------------------------------- images


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int
    diff_id: str
    path: Path  # the blob: an overlaybd layer file (LSMT or ZFile magic)


@dataclass(frozen=True)
class Image:
    ref: str
    layers: tuple[Layer, ...]

    @property
    def chain_ids(self) -> list[str]:
        """containerd's chain IDs of the layers (identity.ChainIDs)."""
        chain: list[str] = []
        for layer in self.layers:
            if not chain:
                chain.append(layer.diff_id)
            else:
                joined = f"{chain[-1]} {layer.diff_id}".encode()
                chain.append("sha256:" + hashlib.sha256(joined).hexdigest())
        return chain

    def layer_labels(
        self, extra: Mapping[str, str] | None = None, index: int = 0
    ) -> tuple[str, dict[str, str]]:
        """A layer's chain ID and the labels containerd unpacks it with, plus ``extra``."""
        chain_id = self.chain_ids[index]
        return chain_id, {**remote_labels(chain_id, self.layers[index], self.ref), **(extra or {})}


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    """A layer directory; a name ``dir/.wh.x`` is an OCI whiteout of ``dir/x``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def build_image(
    store: Path, work: Path, layers: Sequence[Mapping[str, str]], ref: str, *, zfile: bool = False
) -> Image:
    """overlaybd layer blobs (``python -m tcmusim mkimage``) for layer trees, base first."""
    work.mkdir(parents=True, exist_ok=True)
    sources = [write_tree(work / f"layer{index}", files) for index, files in enumerate(layers)]
    command = [sys.executable, "-m", "tcmusim", "mkimage", "--store", str(store)]
    command += ["--oci-tar", str(work / "image.tar"), "--ref", ref, "--work-dir", str(work)]
    if zfile:
        command.append("-z")
    done = run(*command, *sources, cwd=REPO_ROOT)
    document = json.loads(done.stdout)
    return Image(
        ref,
        tuple(
            Layer(entry["digest"], int(entry["size"]), entry["diff_id"], Path(entry["path"]))
            for entry in document["layers"]
        ),
    )


def copy_blobs(image: Image, store: Path) -> None:
    """Put an image's blobs into a (simulated) registry's blob store."""
    directory = store / "sha256"
    directory.mkdir(parents=True, exist_ok=True)
    for layer in image.layers:
        target = directory / layer.digest.split(":", 1)[1]
        if not target.exists():
            shutil.copyfile(layer.path, target)


def read_header(path: Path) -> layerfmt.Header:
    """The tcmusim layer header of an overlaybd layer file."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return layerfmt.read_header(descriptor)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------- obdsnap's files


class SnapshotFiles:
    """What an obdsnap keeps for its snapshots: under its ``root``, and in the configfs and
    sysfs of the simulator ``sim``."""

    sim: RunningSimulator

    @property
    def root(self) -> Path:
        raise NotImplementedError

    def snapshot_dir(self, snapshot_id: int) -> Path:
        return self.root / "snapshots" / str(snapshot_id)

    def fs(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "fs"

    def block(self, snapshot_id: int) -> Path:
        return self.snapshot_dir(snapshot_id) / "block"

    def mountpoint(self, snapshot_id: int) -> Path:
        return self.block(snapshot_id) / "mountpoint"

    def config_path(self, snapshot_id: int) -> Path:
        return self.block(snapshot_id) / "config.v1.json"

    def config(self, snapshot_id: int) -> dict[str, Any]:
        document = json.loads(self.config_path(snapshot_id).read_text())
        assert isinstance(document, dict)
        return document

    def ids(self) -> set[int]:
        return {
            int(entry.name) for entry in (self.root / "snapshots").iterdir() if entry.name.isdigit()
        }

    def latest_id(self) -> int:
        """The ID of the snapshot made last (IDs only grow, and its directory is there)."""
        return max(self.ids())

    def id_of(self, path: str | Path) -> int:
        """The snapshot ID of a path under ``snapshots/<ID>/``."""
        relative = Path(path).relative_to(self.root / "snapshots")
        return int(relative.parts[0])

    # -- devices --------------------------------------------------------------------

    @property
    def tenant(self) -> int:
        """Its ``tenant``: its devices' HBA and WWN prefix."""
        return NO_TENANT

    @property
    def hba_dir(self) -> Path:
        return self.sim.configfs / "target/core" / hba(self.tenant)

    def target_dir(self, snapshot_id: int) -> Path:
        return self.hba_dir / f"dev_{snapshot_id}"

    def loopback_dir(self, snapshot_id: int) -> Path:
        return self.sim.configfs / "target/loopback" / wwn(snapshot_id, self.tenant)

    def configfs_entries(self, snapshot_id: int) -> list[Path]:
        """configfs objects of the snapshot's device that exist."""
        return [
            path
            for path in (self.target_dir(snapshot_id), self.loopback_dir(snapshot_id))
            if path.exists()
        ]

    def device_of(self, snapshot_id: int) -> str | None:
        """The device node of the snapshot's attached device (per configfs and sysfs)."""
        tpg = self.loopback_dir(snapshot_id) / "tpgt_1"
        try:
            address = (tpg / "address").read_text().strip()
        except OSError:
            return None
        disks = self.sim.sysfs / "class/scsi_device" / f"{address}:0" / "device/block"
        try:
            names = sorted(os.listdir(disks))
        except FileNotFoundError:
            return None
        return f"/dev/{names[0]}" if names else None

    def mark(self, snapshot_id: int) -> str | None:
        try:
            return (self.block(snapshot_id) / "backstore_mark").read_text()
        except FileNotFoundError:
            return None

    def device_owner(self, device: str) -> int:
        """The snapshot whose mark names ``device``."""
        owners = [i for i in self.ids() if self.mark(i) == device]
        assert len(owners) == 1, (device, owners)
        return owners[0]


# ---------------------------------------------------------------------- obdsnap on the simulator


@dataclass
class Obd(SnapshotFiles):
    """One obdsnap server on the simulator ``sim``, and a client of it."""

    sim: RunningSimulator
    server: ServerProcess
    settings: dict[str, object]
    channel: Channel | None = None
    real_mounts: list[Path] = field(default_factory=list)

    # -- process ---------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.server.root

    @property
    def tenant(self) -> int:
        value = self.settings.get("tenant", NO_TENANT)
        assert isinstance(value, int)
        return value

    @property
    def client(self) -> api.SnapshotsStub:
        assert self.channel is not None
        return api.SnapshotsStub(self.channel)

    async def start(self) -> Obd:
        await asyncio.to_thread(self.server.start)
        self.channel = Channel(path=str(self.server.address))
        return self

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    async def stop(self) -> int:
        self.close_channel()
        return await asyncio.to_thread(self.server.stop)

    async def restart(self, *, kill: bool) -> None:
        """Stop obdsnap (SIGKILL, or SIGTERM and a clean exit) and start it again."""
        self.close_channel()
        if kill:
            self.server.kill()
        else:
            status = await asyncio.to_thread(self.server.stop)
            assert status == 0, f"obdsnap exited with {status}:\n{self.server.log()}"
        await self.start()

    # -- calls -----------------------------------------------------------------------

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        request = api.PrepareSnapshotRequest(key=key, parent=parent, labels=dict(labels or {}))
        return list((await self.client.prepare(request)).mounts)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        request = api.ViewSnapshotRequest(key=key, parent=parent, labels=dict(labels or {}))
        return list((await self.client.view(request)).mounts)

    async def mounts(self, key: str) -> list[Mount]:
        return list((await self.client.mounts(api.MountsRequest(key=key))).mounts)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        request = api.CommitSnapshotRequest(name=name, key=key, labels=dict(labels or {}))
        await self.client.commit(request)

    async def remove(self, key: str) -> None:
        await self.client.remove(api.RemoveSnapshotRequest(key=key))

    async def stat(self, key: str) -> api.Info:
        info: api.Info = (await self.client.stat(api.StatSnapshotRequest(key=key))).info
        return info

    async def usage(self, key: str) -> api.UsageResponse:
        reply: api.UsageResponse = await self.client.usage(api.UsageRequest(key=key))
        return reply

    async def cleanup(self) -> None:
        await self.client.cleanup(api.CleanupRequest())

    async def list_infos(self) -> list[api.Info]:
        return [
            info
            async for reply in self.client.list(api.ListSnapshotsRequest())
            for info in reply.info
        ]

    # -- the containerd flows -------------------------------------------------------

    async def unpack_remote(self, image: Image, *, ref_label: str = IMAGE_REF) -> list[str]:
        """What containerd's unpacker does with an overlaybd image; the chain IDs.

        Each layer's Prepare must answer ALREADY_EXISTS (the layer is remote).
        """
        parent = ""
        for chain_id, layer in zip(image.chain_ids, image.layers, strict=True):
            labels = remote_labels(chain_id, layer, image.ref, ref_label=ref_label)
            key = f"extract-{time.time_ns()} {chain_id}"
            error = await expect_status(self.prepare(key, parent, labels), Status.ALREADY_EXISTS)
            assert chain_id in (error.message or "")
            parent = chain_id
        return image.chain_ids

    async def unpack_top(self, image: Image) -> tuple[str, int]:
        """``unpack_remote``, then the top layer's chain ID and snapshot ID."""
        chain = await self.unpack_remote(image)
        return chain[-1], self.latest_id()

    def own_id(self, mounts: Sequence[Mount]) -> int:
        """The ID of the snapshot that Prepare/View/Mounts answered for, from its mounts."""
        assert len(mounts) == 1, mounts
        mount = mounts[0]
        if mount.type == "overlay":
            return self.id_of(mount_options(mount)["upperdir"])
        if mount.source.startswith("/dev/"):
            # dev mode: the snapshot whose device it is.
            return self.device_owner(mount.source)
        return self.id_of(mount.source)

    def assert_attached(self, snapshot_id: int, *, mounted: str | None) -> str:
        """The device of the snapshot is attached; mounted ``ro``/``rw``, or not at all (None).

        Returns the device node.
        """
        device = self.device_of(snapshot_id)
        assert device is not None, f"snapshot {snapshot_id}: no device attached"
        assert device in self.sim.loop_devices(), (device, self.sim.loop_devices())
        assert self.mark(snapshot_id) == device
        entry = mount_at(self.mountpoint(snapshot_id))
        if mounted is None:
            assert entry is None, f"{self.mountpoint(snapshot_id)} is mounted: {entry}"
        else:
            assert entry is not None, f"{self.mountpoint(snapshot_id)} is not mounted"
            assert entry.source == device, entry
            assert entry.options.split(",")[0] == mounted, entry
        return device

    def assert_detached(self, snapshot_id: int) -> None:
        """No configfs object, mark, mount or sysfs disk of the snapshot's device is left."""
        assert self.configfs_entries(snapshot_id) == [], self.configfs_entries(snapshot_id)
        assert self.mark(snapshot_id) is None
        assert mount_at(self.mountpoint(snapshot_id)) is None

    def detach_like_reboot(self, snapshot_id: int) -> None:
        """What a reboot does to a device: unmounted, configfs objects gone, loop released."""
        mountpoint = self.mountpoint(snapshot_id)
        if mount_at(mountpoint) is not None:
            umount(mountpoint)
        remove_device(self.sim, snapshot_id, self.tenant)
        assert self.device_of(snapshot_id) is None

    def mount_for_real(self, spec: Mount, target: Path) -> None:
        mount(spec, target)
        self.real_mounts.append(target)

    async def mount_container(self, key: str, parent: str, target: Path) -> list[Mount]:
        """Prepare ``key`` on ``parent`` and mount it on ``target`` as a container's rootfs."""
        mounts = await self.prepare(key, parent)
        self.mount_for_real(mounts[0], target)
        return mounts

    def umount_for_real(self, target: Path) -> None:
        umount(target)
        self.real_mounts.remove(target)

    async def wait_gone(self, snapshot_id: int, within: float = 10.0) -> None:
        """Removed snapshots' directories go in the background: wait for it."""
        directory = self.snapshot_dir(snapshot_id)
        assert await wait_until(lambda: not directory.exists(), within), f"{directory} still there"

    # -- teardown --------------------------------------------------------------------

    async def remove_all(self) -> None:
        """Remove every snapshot, children first."""
        for _ in range(100):
            infos = await self.list_infos()
            if not infos:
                return
            parents = {info.parent for info in infos}
            for info in infos:
                if info.name not in parents:
                    with contextlib.suppress(GRPCError):
                        await self.remove(info.name)
        raise AssertionError("snapshots could not all be removed")

    def leftovers(self) -> list[str]:
        """Devices, mounts and loop devices this server left behind."""
        found = [f"mount {path}" for path in mounts_under(self.root)]
        core = self.hba_dir
        if core.exists():
            found += [f"configfs {entry}" for entry in core.iterdir() if entry.is_dir()]
        loopback = self.sim.configfs / "target/loopback"
        found += [f"configfs {entry}" for entry in loopback.iterdir() if entry.is_dir()]
        found += [f"loop device {device}" for device in self.sim.loop_devices()]
        return found


def remote_labels(
    chain_id: str, layer: Layer, image_ref: str, *, ref_label: str = IMAGE_REF
) -> dict[str, str]:
    """The labels containerd passes when it unpacks a layer of an overlaybd image."""
    return {
        TARGET_SNAPSHOT_REF: chain_id,
        BLOB_DIGEST: layer.digest,
        BLOB_SIZE: str(layer.size),
        ref_label: image_ref,
    }
