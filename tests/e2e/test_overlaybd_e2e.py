"""obdsnap's overlaybd flows under a real containerd and runc, on the TCMU simulator.

Each test starts its own obdsnap, configured with the module's simulator
(configfs/sysfs roots and overlaybd tools), behind its own private containerd:

- local block layers: ``ctr image import`` of an overlaybd-format image from
  ``tcmusim mkimage`` (layer k is a tar holding one file, ``overlaybd.commit``)
  unpacks every layer into a snapshot (keys ``<ns>/<n>/extract-...``, no
  labels) and commits it; obdsnap finds the overlaybd magic and makes it a
  local block layer. ``ctr run`` then gets an overlay on the top layer's
  read-only device, or (rwMode ``dir``/``dev``, from the boot config or the
  ``overlaybd.writable`` snapshot label) a writable device of its own;
- remote block layers: an image in a private registry on 127.0.0.1 whose layer
  descriptors carry the overlaybd annotations, pulled with containerd's own
  unpacker (``unpackpull/main.go``: ctr 1.6's ``image pull`` passes no labels).
  Every layer Prepare is answered ALREADY_EXISTS, nothing is downloaded, and
  the simulator reads the blobs from its blob store.

Devices are real loop devices (the simulator binds them), so containerd's
shim mounts and runc's container really read and write through them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.block import SnapshotFiles
from support.gobuild import build_go_program
from support.mounts import MountEntry, mount_at, mounts_under
from support.server_process import ServerProcess, short_tmpdir
from support.simulator import configfs_devices, force_clean, settings_on

from obdsnap.labels import (
    BLOB_DIGEST,
    BLOB_SIZE,
    IMAGE_REF,
    LOCAL_COMMIT_PATH,
    REMOTE,
    REMOTE_VALUE,
    TARGET_SNAPSHOT_REF,
    WRITABLE,
)
from obdsnap.mountinfo import parse_line
from tcmusim import loopdev
from tcmusim.testing import RunningSimulator

from .containerd import (
    PROXY_PLUGIN_NAME,
    PrivateContainerd,
    SnapshotRow,
    list_snapshots_direct,
    parse_facts,
    run_command,
    snapshot_info_direct,
)
from .ociimage import canonical_json, chain_ids, find_static_busybox, host_goarch, sha256_digest

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN = PROXY_PLUGIN_NAME
GC_TIMEOUT = 20.0


# ---------------------------------------------------------------------- the image

IMAGE_REFERENCE = "docker.io/library/obdsnap-e2e-block:v1"
REMOTE_REPOSITORY = "obdsnap-e2e/remote"
REMOTE_TAG = "v1"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

APPLETS = ("sh", "awk", "cat", "echo", "grep", "ls", "printf", "stat", "test")
BASE_FILE = "etc/e2e/base.txt"
MIDDLE_FILE = "etc/e2e/middle.txt"
TOP_FILE = "etc/e2e/top.txt"
VERSION_FILE = "etc/e2e/version.txt"
DOOMED_FILE = "etc/e2e/doomed.txt"  # whited out by the middle layer
TOP_MODE, TOP_UID, TOP_GID = 0o640, 1000, 1000
WRITTEN_FILE = "written.txt"
WRITTEN_CONTENT = "written by the container"

# Runs in the container (busybox sh); prints one "name=value" line per fact.
READER_SCRIPT = f"""
fact() {{ printf '%s=%s\\n' "$1" "$2"; }}
fact base "$(cat /{BASE_FILE})"
fact middle "$(cat /{MIDDLE_FILE})"
fact top "$(cat /{TOP_FILE})"
fact top_mode_owner "$(stat -c '%a %u %g' /{TOP_FILE})"
fact version "$(cat /{VERSION_FILE})"
fact doomed "$(test -e /{DOOMED_FILE} && echo present || echo absent)"
fact whiteout_markers "$(ls -A /etc/e2e | grep -c '^\\.wh\\.')"
fact root_mount "$(awk '$5 == "/" {{ line = $0 }} END {{ print line }}' /proc/self/mountinfo)"
echo "{WRITTEN_CONTENT}" > /{WRITTEN_FILE}
fact written "$(cat /{WRITTEN_FILE})"
"""
EXPECTED_FACTS = {
    "base": "base layer",
    "middle": "middle layer",
    "top": "top layer",
    "top_mode_owner": f"{TOP_MODE:o} {TOP_UID} {TOP_GID}",
    "version": "v2",
    "doomed": "absent",
    "whiteout_markers": "0",
    "written": WRITTEN_CONTENT,
}


def write_layer_trees(work: Path, busybox: Path) -> list[Path]:
    """Three layer directories, base first: busybox; a whiteout and an overwrite; a file."""
    base, middle, top = (work / f"layer{index}" for index in range(3))
    for directory in ("bin", "dev", "proc", "sys", "run", "root", "etc/e2e"):
        (base / directory).mkdir(parents=True, exist_ok=True)
    (base / "tmp").mkdir()
    (base / "tmp").chmod(0o1777)
    shutil.copyfile(busybox, base / "bin/busybox")
    (base / "bin/busybox").chmod(0o755)
    for applet in APPLETS:
        (base / "bin" / applet).symlink_to("busybox")
    (base / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (base / "etc/group").write_text("root:x:0:\n")
    (base / BASE_FILE).write_text("base layer\n")
    (base / VERSION_FILE).write_text("v1\n")
    (base / DOOMED_FILE).write_text("whited out by the middle layer\n")

    (middle / "etc/e2e").mkdir(parents=True)
    (middle / MIDDLE_FILE).write_text("middle layer\n")
    (middle / VERSION_FILE).write_text("v2\n")
    (middle / "etc/e2e" / (".wh." + Path(DOOMED_FILE).name)).write_text("")

    (top / "etc/e2e").mkdir(parents=True)
    (top / TOP_FILE).write_text("top layer\n")
    os.chown(top / TOP_FILE, TOP_UID, TOP_GID)
    (top / TOP_FILE).chmod(TOP_MODE)
    return [base, middle, top]


@dataclass(frozen=True)
class BlobLayer:
    digest: str  # of the overlaybd layer file (the registry blob)
    size: int
    path: Path  # the blob in the simulator's blob store
    diff_id: str  # of the OCI layer tar of the local-format archive


@dataclass(frozen=True)
class BlockImage:
    reference: str
    archive: Path  # OCI archive: layer k is a tar holding overlaybd.commit = blob k
    layers: tuple[BlobLayer, ...]

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids([layer.diff_id for layer in self.layers])


def build_block_image(work: Path, store: Path, busybox: Path) -> BlockImage:
    """``tcmusim mkimage``: blobs into ``store`` (``sha256/<hex>``) and the OCI archive."""
    sources = write_layer_trees(work, busybox)
    archive = work / "image.tar"
    command = [sys.executable, "-m", "tcmusim", "mkimage", "--store", str(store)]
    command += ["--oci-tar", str(archive), "--ref", IMAGE_REFERENCE, "--work-dir", str(work)]
    done = run_command([*command, *map(str, sources)], timeout=120)
    layers = tuple(
        BlobLayer(entry["digest"], int(entry["size"]), Path(entry["path"]), entry["diff_id"])
        for entry in json.loads(done.stdout)["layers"]
    )
    return BlockImage(IMAGE_REFERENCE, archive, layers)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------------- a private registry

REGISTRY_BIN = "/usr/bin/docker-registry"  # Debian's docker-registry (distribution 2.8)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalRegistry:
    """docker-registry serving a directory over plain HTTP, on 127.0.0.1 only."""

    def __init__(self, workdir: Path, binary: str = REGISTRY_BIN) -> None:
        self.workdir = workdir
        self.binary = binary
        self.log_path = workdir / "registry.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        # Never through a proxy from the environment: the registry is ours, on loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0, attempts: int = 3) -> LocalRegistry:
        for _ in range(attempts):  # the free port may be taken before the registry binds it
            self.port = free_port()
            config = self.workdir / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'data'}\n"
                f"http:\n  addr: {self.host}\n"
            )
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    [self.binary, "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready(timeout):
                return self
        raise RuntimeError(f"docker-registry did not start:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while self._process.poll() is None:
            with (
                contextlib.suppress(OSError),
                self._opener.open(self.url + "/v2/", timeout=2) as reply,
            ):
                if reply.status == 200:
                    return True
            if time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(
        self, method: str, url: str, data: bytes | None = None, content_type: str = ""
    ) -> tuple[int, Mapping[str, str]]:
        request = urllib.request.Request(url, data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with self._opener.open(request, timeout=60) as reply:
                return reply.status, dict(reply.headers)
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            raise AssertionError(f"{method} {url}: HTTP {error.code}: {body}") from error

    def push_blob(self, repository: str, data: bytes) -> tuple[str, int]:
        """Monolithic upload (POST, then PUT with the digest); returns (digest, size)."""
        digest = sha256_digest(data)
        status, headers = self._call("POST", f"{self.url}/v2/{repository}/blobs/uploads/")
        assert status == 202, status
        location = headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        separator = "&" if "?" in location else "?"
        status, _ = self._call(
            "PUT", f"{location}{separator}digest={digest}", data, "application/octet-stream"
        )
        assert status == 201, status
        return digest, len(data)

    def push_manifest(self, repository: str, tag: str, manifest: bytes) -> None:
        url = f"{self.url}/v2/{repository}/manifests/{tag}"
        status, _ = self._call("PUT", url, manifest, MEDIA_MANIFEST)
        assert status == 201, status


@dataclass(frozen=True)
class RemoteImage:
    reference: str
    manifest_digest: str
    config_digest: str
    layers: tuple[BlobLayer, ...]

    @property
    def chain_ids(self) -> list[str]:
        # An overlaybd image's diff IDs are the digests of its (uncompressed) layer blobs.
        return chain_ids([layer.digest for layer in self.layers])


def push_overlaybd_image(
    registry: LocalRegistry, image: BlockImage, repository: str, tag: str
) -> RemoteImage:
    """The blobs as layers whose annotations make containerd's unpacker pass remote labels."""
    reference = f"{registry.host}/{repository}:{tag}"
    descriptors = []
    for layer in image.layers:
        digest, size = registry.push_blob(repository, layer.path.read_bytes())
        assert (digest, size) == (layer.digest, layer.size)
        annotations = {BLOB_DIGEST: digest, BLOB_SIZE: str(size), IMAGE_REF: reference}
        descriptors.append(
            {
                "mediaType": MEDIA_LAYER_TAR,
                "digest": digest,
                "size": size,
                "annotations": annotations,
            }
        )
    config = canonical_json(
        {
            "architecture": host_goarch(),
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in image.layers]},
        }
    )
    config_digest, config_size = registry.push_blob(repository, config)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
            "layers": descriptors,
        }
    )
    registry.push_manifest(repository, tag, manifest)
    return RemoteImage(reference, sha256_digest(manifest), config_digest, image.layers)


# ---------------------------------------------------------------------- containerd's unpacker

UNPACK_PULL_SOURCE = Path(__file__).with_name("unpackpull")


# ---------------------------------------------------------------------- obdsnap + containerd


def option_map(options: str) -> dict[str, str]:
    return {key: value for key, _, value in (item.partition("=") for item in options.split(","))}


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

    def assert_device(self, snapshot_id: int, *, mounted: str | None) -> str:
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
            assert (entry.source, entry.fs_type) == (device, "ext4"), entry
            assert entry.options.split(",")[0] == mounted, entry
        return device

    # -- containers -------------------------------------------------------------------

    def run_reader(
        self, reference: str, container_id: str, labels: Mapping[str, str] | None = None
    ) -> MountEntry:
        """Runs the reader script; checks what it saw; returns the container's root mount."""
        result = self.containerd.run_container(
            reference,
            container_id,
            ["/bin/sh", "-c", READER_SCRIPT],
            snapshotter=PLUGIN,
            snapshotter_labels=labels,
        )
        facts = parse_facts(result.stdout)
        root_line = facts.pop("root_mount", "")
        assert facts == EXPECTED_FACTS, f"container output:\n{result.stdout}{result.stderr}"
        assert root_line, f"no mount on / in the container's mountinfo:\n{result.stdout}"
        entry = parse_line(root_line)
        assert entry is not None, root_line
        return entry

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


@pytest.fixture(scope="module")
def block_image(e2e_host: None, simulator: RunningSimulator) -> Iterator[BlockImage]:
    """The test image; its blobs go straight into the simulator's blob store (its registry)."""
    busybox = find_static_busybox()
    assert busybox is not None  # e2e_host checked it
    work = short_tmpdir()
    try:
        yield build_block_image(work, simulator.blob_store, busybox)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def start_stack(
    e2e_host: None, simulator: RunningSimulator, tmp_path: Path
) -> Iterator[StartStack]:
    """``start_stack(rwMode="dir")``: obdsnap (boot config keys given) behind a containerd."""
    stacks: list[Stack] = []

    def start(**settings: object) -> Stack:
        workdir = short_tmpdir()
        config = settings_on(simulator, **{"rwMode": "overlayfs", **settings})
        server = ServerProcess.with_config(workdir, config)
        containerd = PrivateContainerd(
            tmp_path / f"containerd-{len(stacks)}", {PLUGIN: server.address}
        )
        stack = Stack(simulator, workdir, server, containerd)
        stacks.append(stack)
        server.start()
        containerd.start()
        return stack

    try:
        yield start
    finally:
        simulator.control.clear()
        problems = [problem for stack in stacks for problem in stack.tear_down()]
        assert not problems, "\n".join(problems)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.skip(f"the remote flow needs {REGISTRY_BIN} (apt-get install docker-registry)")
    workdir = tmp_path / "registry"
    workdir.mkdir()
    with LocalRegistry(workdir) as running:
        yield running


@pytest.fixture(scope="session")
def unpack_pull() -> Path:
    return build_go_program(UNPACK_PULL_SOURCE, "unpackpull")


# ---------------------------------------------------------------------- checks


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
    stack: Stack, root: MountEntry, top_id: int, *, only_device: bool
) -> int:
    """The rootfs was an overlay on the top layer's read-only device; the container's ID."""
    assert root.fs_type == "overlay", root
    options = option_map(root.super_options)
    assert options["lowerdir"] == str(stack.mountpoint(top_id)), options
    container_id = stack.id_of(options["upperdir"])
    assert options["workdir"] == str(stack.fs(container_id).with_name("work")), options
    device = stack.assert_device(top_id, mounted="ro")
    if only_device:
        others = {i: stack.mark(i) for i in sorted(stack.ids()) if i != top_id and stack.mark(i)}
        assert others == {}, f"devices other than the top layer's: {others}"
        assert stack.loop_devices() == [device], stack.loop_devices()
    # What the container wrote went to the overlay's upper directory.
    assert (stack.fs(container_id) / WRITTEN_FILE).read_text() == WRITTEN_CONTENT + "\n"
    return container_id


def read_from_device(device: str, path: str) -> str:
    """A file of the (unmounted) ext4 filesystem on ``device``."""
    return run_command(["debugfs", "-R", f"cat /{path}", device], timeout=30).stdout


# ---------------------------------------------------------------------- tests


def test_local_block_layers_import_run_remove(
    block_image: BlockImage, start_stack: StartStack
) -> None:
    stack = start_stack()
    containerd = stack.containerd
    assert list_snapshots_direct(stack.server.address, PLUGIN) == []
    containerd.import_image(block_image.archive, PLUGIN)
    ids = check_local_layers(stack, block_image)
    top_id = ids[block_image.chain_ids[-1]]

    root = stack.run_reader(block_image.reference, "reader")
    container_id = check_overlay_on_device(stack, root, top_id, only_device=True)
    assert stack.backend()["reader"][1]["Kind"] == "Active"
    assert stack.mark(container_id) is None, "an overlayfs rootfs has no device of its own"
    listed = {row.key: row for row in containerd.list_snapshots(PLUGIN)}
    assert listed["reader"] == SnapshotRow("reader", block_image.chain_ids[-1], "Active")

    stack.remove_container("reader")
    stack.assert_device(top_id, mounted="ro")  # autoRemoveDev is off: the image's device stays
    containerd.remove_image(block_image.reference)
    stack.assert_all_released()


def test_import_attaches_no_device(block_image: BlockImage, start_stack: StartStack) -> None:
    """Unpacking a layer is never a container's rootfs: no device is needed to import."""
    stack = start_stack()
    stack.containerd.import_image(block_image.archive, PLUGIN)
    ids = check_local_layers(stack, block_image)
    attached = {chain_id: stack.mark(i) for chain_id, i in ids.items() if stack.mark(i)}
    assert attached == {}, f"import attached devices: {attached}"
    assert stack.loop_devices() == []


WRITABLE_CASES = [
    pytest.param({"rwMode": "dir"}, {}, "dir", id="config-dir"),
    pytest.param({}, {WRITABLE: "dir"}, "dir", id="label-dir"),
    pytest.param({}, {WRITABLE: "dev"}, "dev", id="label-dev"),
]


@pytest.mark.parametrize(("settings", "labels", "mode"), WRITABLE_CASES)
def test_writable_device_rootfs(
    settings: dict[str, object],
    labels: dict[str, str],
    mode: str,
    block_image: BlockImage,
    start_stack: StartStack,
) -> None:
    """rwMode dir/dev: the container's rootfs is a writable device of its own."""
    stack = start_stack(**settings)
    containerd = stack.containerd
    containerd.import_image(block_image.archive, PLUGIN)
    ids = check_local_layers(stack, block_image)
    top_id = ids[block_image.chain_ids[-1]]

    root = stack.run_reader(block_image.reference, "writer", labels)
    assert root.fs_type == "ext4", root
    assert root.source.startswith("/dev/loop"), root
    container_id = stack.device_owner(root.source)
    assert container_id not in ids.values()
    _, info = stack.backend()["writer"]
    assert info["Kind"] == "Active"
    assert (info.get("Labels") or {}).get(WRITABLE) == labels.get(WRITABLE), info
    block = stack.block(container_id)
    config = stack.config(container_id)
    assert config["lowers"] == stack.config(top_id)["lowers"], config
    assert config["upper"] == {
        "index": str(block / "writable_index"),
        "data": str(block / "writable_data"),
    }, config
    assert stack.mark(top_id) is None, "a writable rootfs needs no device of its parent"

    # What the container wrote is on its device, not in fs/.
    assert not (stack.fs(container_id) / WRITTEN_FILE).exists()
    if mode == "dir":
        device = stack.assert_device(container_id, mounted="rw")
        written = (stack.mountpoint(container_id) / WRITTEN_FILE).read_text()
    else:
        device = stack.assert_device(container_id, mounted=None)
        written = read_from_device(device, WRITTEN_FILE)
    assert written == WRITTEN_CONTENT + "\n"

    stack.remove_container("writer")
    assert stack.configfs_entries(container_id) == []
    assert device not in stack.loop_devices()
    containerd.remove_image(block_image.reference)
    stack.assert_all_released()


def test_remote_block_layers_pull_run_remove(
    block_image: BlockImage,
    start_stack: StartStack,
    registry: LocalRegistry,
    unpack_pull: Path,
) -> None:
    image = push_overlaybd_image(registry, block_image, REMOTE_REPOSITORY, REMOTE_TAG)
    stack = start_stack()
    containerd = stack.containerd
    pulled = run_command(
        [str(unpack_pull), str(containerd.address), containerd.namespace, PLUGIN, image.reference],
        timeout=120,
    )
    assert pulled.stdout.split() == [image.reference, image.manifest_digest]

    # containerd skipped every layer: nothing but the manifest and config was downloaded.
    content = containerd.content_digests()
    assert {image.manifest_digest, image.config_digest} <= content
    assert content.isdisjoint(layer.digest for layer in image.layers), content
    listed = {row.key: row for row in containerd.list_snapshots(PLUGIN)}
    assert listed == committed_chain(image.chain_ids), "ctr snapshot ls: not the committed chain"

    # Each layer was committed through the remote path, under its chain ID.
    backend = stack.backend()
    assert {name: key for name, (key, _) in backend.items()} == {c: c for c in image.chain_ids}
    ids_by_digest = {stack.config(i)["lowers"][-1]["digest"]: i for i in sorted(stack.ids())}
    repo_blob_url = f"https://{registry.host}/v2/{REMOTE_REPOSITORY}/blobs"
    lowers: list[dict[str, object]] = []
    for chain_id, layer in zip(image.chain_ids, image.layers, strict=True):
        _, info = backend[chain_id]
        assert info["Kind"] == "Committed", info
        assert info["Labels"] == {
            TARGET_SNAPSHOT_REF: chain_id,
            BLOB_DIGEST: layer.digest,
            BLOB_SIZE: str(layer.size),
            IMAGE_REF: image.reference,
            REMOTE: REMOTE_VALUE,
        }, info
        snapshot_id = ids_by_digest[layer.digest]
        lowers.append(
            {"digest": layer.digest, "size": layer.size, "dir": str(stack.fs(snapshot_id))}
        )
        config = stack.config(snapshot_id)
        assert (config["repoBlobUrl"], config["lowers"], config["upper"]) == (
            repo_blob_url,
            lowers,
            {},
        ), config
        assert list(stack.fs(snapshot_id).iterdir()) == [], "a remote layer has nothing in fs/"
    assert stack.loop_devices() == [], "pulling attached a device"

    top_id = ids_by_digest[image.layers[-1].digest]
    root = stack.run_reader(image.reference, "remote-reader")
    check_overlay_on_device(stack, root, top_id, only_device=True)
    # The simulator opened the remote lowers from its blob store (its registry).
    assert (stack.block(top_id) / "init-debug.log").read_text() == "success"

    stack.remove_container("remote-reader")
    containerd.remove_image(image.reference)
    stack.assert_all_released()
