"""One obdsnap on the TCMU simulator behind a private containerd, and checks on what it holds."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.block import SnapshotFiles
from support.mounts import MountEntry, mount_at, mounts_under
from support.server_process import ServerProcess
from support.simulator import configfs_devices, force_clean

from obdsnap.labels import LOCAL_COMMIT_PATH, REMOTE
from obdsnap.mountinfo import parse_line
from tcmusim import loopdev
from tcmusim.testing import RunningSimulator

from .blockimage import (
    EXPECTED_FACTS,
    READER_SCRIPT,
    WRITTEN_CONTENT,
    WRITTEN_FILE,
    BlockImage,
    file_digest,
)
from .containerd import (
    PROXY_PLUGIN_NAME,
    PrivateContainerd,
    SnapshotRow,
    list_snapshots_direct,
    parse_facts,
    run_command,
    snapshot_info_direct,
)

PLUGIN = PROXY_PLUGIN_NAME
GC_TIMEOUT = 20.0


def option_map(options: str) -> dict[str, str]:
    return {key: value for key, _, value in (item.partition("=") for item in options.split(","))}


@dataclass(frozen=True)
class ReaderRun:
    root: MountEntry  # the container's root mount
    started: float  # the host's uptime (seconds since boot) when the reader began


def uptime() -> float:
    """Seconds since boot, as a container reads them from /proc/uptime."""
    return float(Path("/proc/uptime").read_text().split()[0])


@dataclass
class Stack(SnapshotFiles):
    """One obdsnap on the simulator and the private containerd that uses it."""

    sim: RunningSimulator
    workdir: Path
    server: ServerProcess
    containerd: PrivateContainerd

    # -- obdsnap's snapshots ----------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.server.root

    def backend_keys(self) -> dict[str, str]:
        """obdsnap's keys by containerd's names.

        containerd names snapshots ``<namespace>/<n>/<name>`` in the backend,
        except remote layers, which obdsnap commits under the target name itself.
        """
        found = {}
        for row in list_snapshots_direct(self.server.address, PLUGIN):
            scope, _, rest = row.key.partition("/")
            found[rest.partition("/")[2] if scope == self.containerd.namespace else row.key] = (
                row.key
            )
        return found

    def backend(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """obdsnap's snapshots by containerd's name: (obdsnap's key, its Stat info)."""
        return {
            name: (key, snapshot_info_direct(self.server.address, PLUGIN, key))
            for name, key in self.backend_keys().items()
        }

    def ids_by_top_lower(self, field: str) -> dict[str, int]:
        """Snapshot IDs of the layers with a config, by a field of their own (top) lower."""
        configs = {i: self.config(i) for i in sorted(self.ids()) if self.config_path(i).exists()}
        return {config["lowers"][-1][field]: i for i, config in configs.items()}

    # -- devices ----------------------------------------------------------------------

    def loop_devices(self) -> list[str]:
        """Loop devices the simulator bound, or backed by a file of this obdsnap."""
        prefix = str(self.workdir) + "/"
        ours = {
            device
            for device, backing in loopdev.backing_files().items()
            if backing.startswith(prefix)
        }
        return sorted(ours | set(self.sim.loop_devices()))

    def assert_device(self, snapshot_id: int, *, mounted: str | None, fs_type: str = "ext4") -> str:
        """The snapshot's device is a loop device of the simulator, mounted ro/rw or not at all."""
        device = self.mark(snapshot_id)
        assert device is not None, f"snapshot {snapshot_id} has no device"
        assert device.startswith("/dev/loop"), device
        assert device in self.sim.loop_devices(), (device, self.sim.loop_devices())
        assert len(self.configfs_entries(snapshot_id)) == 2, self.configfs_entries(snapshot_id)
        entry = mount_at(self.mountpoint(snapshot_id))
        if mounted is None:
            assert entry is None, f"{self.mountpoint(snapshot_id)} is mounted: {entry}"
        else:
            assert entry is not None, f"{self.mountpoint(snapshot_id)} is not mounted"
            assert (entry.source, entry.fs_type) == (device, fs_type), entry
            assert entry.options.split(",")[0] == mounted, entry
        return device

    # -- containers -------------------------------------------------------------------

    def run_reader(
        self,
        reference: str,
        container_id: str,
        labels: Mapping[str, str] | None = None,
        snapshotter: str = PLUGIN,
    ) -> ReaderRun:
        """Runs the reader script; checks what it saw; returns the container's root mount."""
        result = self.containerd.run_container(
            reference,
            container_id,
            ["/bin/sh", "-c", READER_SCRIPT],
            snapshotter=snapshotter,
            snapshotter_labels=labels,
        )
        facts = parse_facts(result.stdout)
        uptime = facts.pop("uptime", "")
        root_line = facts.pop("root_mount", "")
        assert facts == EXPECTED_FACTS, f"container output:\n{result.stdout}{result.stderr}"
        assert root_line, f"no mount on / in the container's mountinfo:\n{result.stdout}"
        entry = parse_line(root_line)
        assert entry is not None, root_line
        return ReaderRun(entry, float(uptime.split()[0]))

    def remove_container(self, container_id: str) -> None:
        """Remove a container; containerd's GC then removes its snapshot in the background."""
        self.containerd.remove_container(container_id)
        deadline = time.monotonic() + GC_TIMEOUT
        while container_id in self.backend_keys():
            assert time.monotonic() < deadline, f"obdsnap still holds {container_id!r}"
            time.sleep(0.1)

    def assert_all_released(self) -> None:
        """After ``image rm --sync``: containerd's GC removed everything and ran Cleanup."""
        snapshot_dir = self.root / "snapshots"
        deadline = time.monotonic() + GC_TIMEOUT
        while True:
            in_containerd = self.containerd.list_snapshots(PLUGIN)
            in_server = list_snapshots_direct(self.server.address, PLUGIN)
            on_disk = sorted(entry.name for entry in snapshot_dir.iterdir())
            if not in_containerd and not in_server and not on_disk:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert in_containerd == [], "containerd still lists snapshots after image rm --sync"
        assert in_server == [], "obdsnap still holds snapshots after containerd's GC"
        assert on_disk == [], f"{snapshot_dir} not empty after GC (Remove + Cleanup)"
        assert mounts_under(self.root) == [], mounts_under(self.root)
        assert configfs_devices(self.sim) == [], configfs_devices(self.sim)
        assert self.loop_devices() == [], self.loop_devices()

    def tear_down(self) -> list[str]:
        """Stop both; then take down whatever a failed test left (devices, mounts)."""
        problems = [f"containerd cleanup: {note}" for note in self.containerd.stop()]
        if self.server.running():
            status = self.server.stop()
            if status != 0:
                problems.append(f"obdsnap exited with {status}:\n{self.server.log()}")
        else:
            problems.append(f"obdsnap was not running at the end:\n{self.server.log()}")
        force_clean(self.sim, [self.workdir])
        if mounts_under(self.workdir):
            problems.append(f"mounts remain under {self.workdir}; not removed")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


StartStack = Callable[..., Stack]


def committed_chain(chain: list[str]) -> dict[str, SnapshotRow]:
    parents = ["", *chain[:-1]]
    return {
        chain_id: SnapshotRow(chain_id, parent, "Committed")
        for chain_id, parent in zip(chain, parents, strict=True)
    }


def check_local_layers(stack: Stack, image: BlockImage) -> dict[str, int]:
    """After ``ctr image import``: every layer a local block layer. Snapshot IDs by chain ID."""
    listed = {row.key: row for row in stack.containerd.list_snapshots(PLUGIN)}
    assert listed == committed_chain(image.chain_ids), "ctr snapshot ls: not the committed chain"
    backend = stack.backend()
    assert set(backend) == set(image.chain_ids), sorted(backend)
    ids: dict[str, int] = {}
    lowers: list[dict[str, str]] = []
    for chain_id, layer in zip(image.chain_ids, image.layers, strict=True):
        key, info = backend[chain_id]
        labels = info.get("Labels") or {}
        assert info["Kind"] == "Committed", (key, info)
        assert LOCAL_COMMIT_PATH in labels, f"{key}: not detected as a local block layer: {info}"
        assert REMOTE not in labels, info
        commit_file = Path(labels[LOCAL_COMMIT_PATH])
        snapshot_id = stack.id_of(commit_file)
        assert commit_file == stack.fs(snapshot_id) / "overlaybd.commit"
        # containerd unpacked the layer tar into fs/: the layer file is the image's blob.
        assert file_digest(commit_file) == layer.digest, (
            f"{key}: fs/overlaybd.commit is not the layer's blob"
        )
        lowers.append({"dir": str(stack.fs(snapshot_id))})
        config = stack.config(snapshot_id)
        assert config["lowers"] == lowers, config
        assert (config["repoBlobUrl"], config["upper"]) == ("", {}), config
        ids[chain_id] = snapshot_id
    return ids


def check_overlay_on_device(
    stack: Stack, root: MountEntry, top_id: int, *, only_device: bool, fs_type: str = "ext4"
) -> int:
    """The rootfs was an overlay on the top layer's read-only device; the container's ID."""
    assert root.fs_type == "overlay", root
    options = option_map(root.super_options)
    assert options["lowerdir"] == str(stack.mountpoint(top_id)), options
    container_id = stack.id_of(options["upperdir"])
    assert options["workdir"] == str(stack.fs(container_id).with_name("work")), options
    device = stack.assert_device(top_id, mounted="ro", fs_type=fs_type)
    if only_device:
        others = {i: stack.mark(i) for i in sorted(stack.ids()) if i != top_id and stack.mark(i)}
        assert others == {}, f"devices other than the top layer's: {others}"
        assert stack.loop_devices() == [device], stack.loop_devices()
    # What the container wrote went to the overlay's upper directory.
    assert (stack.fs(container_id) / WRITTEN_FILE).read_text() == WRITTEN_CONTENT + "\n"
    return container_id


def run_on_the_top_device_and_release(
    stack: Stack, reference: str, container_id: str, top_id: int
) -> None:
    """A container on the image's top device alone, which overlaybd opened; then the
    container and the image removed, and everything released."""
    root = stack.run_reader(reference, container_id).root
    check_overlay_on_device(stack, root, top_id, only_device=True)
    assert (stack.block(top_id) / "init-debug.log").read_text() == "success"
    stack.remove_container(container_id)
    stack.containerd.remove_image(reference)
    stack.assert_all_released()


def read_from_device(device: str, path: str) -> str:
    """A file of the (unmounted) ext4 filesystem on ``device``."""
    return run_command(["debugfs", "-R", f"cat /{path}", device], timeout=30).stdout
