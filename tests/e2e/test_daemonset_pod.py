"""The DaemonSet's pod, run for real: obdsnap's image under a private containerd A with the
container spec of the rendered manifest, and a second containerd B on the host that uses
its socket through [proxy_plugins].

The ``ctr run`` options come from ``kubectl kustomize deploy/kubernetes/base``: privileged,
host network, the hostPath mounts with their propagation, the ConfigMap's config, the
command and the probes. Node paths move under a scratch directory (daemonset.place_on_host).
Run with -s to see the seconds from ``ctr run`` to the first passing readiness probe.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from debian_rootfs import REPO_ROOT

from . import ociimage
from .containerd import (
    PROXY_PLUGIN_NAME,
    PrivateContainerd,
    list_snapshots_direct,
    mount_points_under,
    unmount_all_under,
)
from .daemonset import (
    ContainerSpec,
    HostMount,
    container_spec,
    ctr_run_options,
    node_path,
    place_on_host,
    render,
)
from .obdsnap_image import existing_or_made_image

pytestmark = [pytest.mark.root, pytest.mark.slow]

BASE = REPO_ROOT / "deploy" / "kubernetes" / "base"
CONTAINER = "obdsnap"
READY_TIMEOUT = 90.0
GC_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def obdsnap_image(e2e_host: None) -> Path:
    return existing_or_made_image()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The node's directory tree; a shared mount, as kubelet wants under Bidirectional mounts."""
    path = Path(tempfile.mkdtemp(prefix="obd-pod-", dir="/tmp"))
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "--make-rshared", str(path)], check=True)
    try:
        yield path
    finally:
        leftover = unmount_all_under(path)
        assert not leftover, f"still mounted under {path}: {leftover}"
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


class PodRunner:
    """Runs the manifest's obdsnap container in containerd A, as kubelet would."""

    def __init__(self, spec: ContainerSpec, scratch: Path, containerd: PrivateContainerd) -> None:
        self.spec = spec
        self.containerd = containerd
        self.mounts = [place_on_host(mount, scratch) for mount in spec.host_mounts]
        self.config = node_config(spec, scratch)
        config_dir = scratch / "configmap"
        config_dir.mkdir()
        for name, text in spec.config_files.items():
            (config_dir / name).write_text(text)
        (config_dir / "config.json").write_text(json.dumps(self.config, indent=2))
        self.options = ctr_run_options(spec, self.mounts, config_dir)
        self.log = scratch / "obdsnap.log"
        self._probes = 0

    @property
    def socket(self) -> Path:
        return Path(self.config["address"])

    def start(self) -> float:
        """``ctr run`` of the container; returns the seconds until a readiness probe passed."""
        started = time.monotonic()
        self.containerd.run_container(
            self.spec.image,
            CONTAINER,
            self.spec.command,
            snapshotter="overlayfs",
            detach=True,
            log_file=self.log,
            run_options=self.options,
        )
        probe = self.spec.readiness
        interval = min(probe.period_seconds, 0.2)
        while True:
            if self.probe(probe.command, probe.timeout_seconds).returncode == 0:
                return time.monotonic() - started
            if time.monotonic() - started > READY_TIMEOUT:
                raise AssertionError(f"obdsnap not ready in {READY_TIMEOUT:.0f}s:\n{self.output()}")
            time.sleep(interval)

    def check_other_probes(self) -> None:
        """Once ready, the liveness probe (and the startup probe, if any) pass too."""
        for probe in (self.spec.liveness, self.spec.startup):
            if probe is not None:
                done = self.probe(probe.command, probe.timeout_seconds)
                assert done.returncode == 0, f"{probe.command}: {done.stdout}{done.stderr}"

    def probe(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """An exec probe, as kubelet runs it: in the running container."""
        self._probes += 1
        return self.containerd.ctr(
            "tasks", "exec", "--exec-id", f"probe-{self._probes}", CONTAINER, *command,
            timeout=timeout + 10, check=False,
        )  # fmt: skip

    def stop(self) -> None:
        """SIGTERM, as kubelet stops a pod; then the task and the container go."""
        self.containerd.ctr("tasks", "kill", "--signal", "SIGTERM", CONTAINER)
        deadline = time.monotonic() + 30
        while self.containerd.task_statuses().get(CONTAINER) == "RUNNING":
            assert time.monotonic() < deadline, f"obdsnap ignored SIGTERM:\n{self.output()}"
            time.sleep(0.1)
        self.containerd.ctr("tasks", "delete", CONTAINER)
        self.containerd.ctr("containers", "rm", CONTAINER)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no output)"


def node_config(spec: ContainerSpec, scratch: Path) -> dict[str, Any]:
    """The ConfigMap's config with its root and socket where place_on_host put their mounts.

    The exporter gets a free port: with the host's network, the manifest's port
    may be taken on a test machine.
    """
    config = spec.config()
    host_paths = {mount.host_path for mount in spec.host_mounts}
    assert config["root"] in host_paths, f"the config's root {config['root']} is no hostPath"
    socket_dir = str(Path(config["address"]).parent)
    assert socket_dir in host_paths, f"the socket's directory {socket_dir} is no hostPath"
    exporter = dict(config.get("exporterConfig", {}))
    assert exporter.get("enable"), "the manifest's config does not enable the exporter"
    exporter["port"] = free_port()
    return {
        **config,
        "root": node_path(config["root"], scratch),
        "address": node_path(config["address"], scratch),
        "exporterConfig": exporter,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        assert isinstance(port, int)
        return port


def check_spec_follows_contract(spec: ContainerSpec) -> None:
    mounts = {mount.mount_path: mount for mount in spec.host_mounts}
    root = "/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd"
    for path in (root, "/run/overlaybd-snapshotter", "/sys/kernel/config", "/dev"):
        assert path in mounts, f"no hostPath mounted at {path}"
    for path in ("/opt/overlaybd", "/lib/modules"):
        assert path in mounts, f"no hostPath mounted at {path}"
    assert all(m.host_path == m.mount_path for m in spec.host_mounts), spec.host_mounts
    assert mounts[root].propagation == "rshared"
    assert mounts["/lib/modules"].read_only
    assert spec.privileged and spec.host_network
    assert spec.readiness.command[:2] == ["/usr/bin/obdsnap", "health"]
    assert spec.liveness.command[:2] == ["/usr/bin/obdsnap", "health"]


def wait_for_empty(containerd: PrivateContainerd, proxy: Path) -> None:
    """containerd's GC has removed the image's snapshots, in containerd and in obdsnap."""
    deadline = time.monotonic() + GC_TIMEOUT
    while True:
        in_containerd = containerd.list_snapshots(PROXY_PLUGIN_NAME)
        in_obdsnap = list_snapshots_direct(proxy, PROXY_PLUGIN_NAME)
        if not in_containerd and not in_obdsnap:
            return
        assert time.monotonic() < deadline, f"left: {in_containerd} {in_obdsnap}"
        time.sleep(0.2)


def wait_for_proxy(containerd: PrivateContainerd) -> float:
    """Seconds until containerd reaches obdsnap again: its gRPC connection to a proxy
    snapshotter that went away retries with a backoff (up to 3 s in containerd 1.6)."""
    started = time.monotonic()
    while True:
        args = ("snapshot", "--snapshotter", PROXY_PLUGIN_NAME, "ls")
        if containerd.ctr(*args, check=False, timeout=30).returncode == 0:
            return time.monotonic() - started
        assert time.monotonic() - started < READY_TIMEOUT, "containerd does not reach obdsnap"
        time.sleep(0.2)


def test_daemonset_pod_serves_containerd_across_a_restart(
    obdsnap_image: Path, scratch: Path, tmp_path: Path
) -> None:
    spec = container_spec(render(BASE), CONTAINER)
    check_spec_follows_contract(spec)
    test_image = ociimage.build_image(tmp_path / "test-image.tar", 3)
    top_file = f"/{ociimage.TOP_FILE}"
    top_content = ociimage.TOP_CONTENT.decode()

    with PrivateContainerd(tmp_path / "logs-a").running() as node_a:
        node_a.ctr("images", "import", str(obdsnap_image), timeout=600)
        assert spec.image in node_a.ctr("images", "ls", "-q").stdout.split(), spec.image
        pod = PodRunner(spec, scratch, node_a)
        ready_seconds = pod.start()
        pod.check_other_probes()
        metrics_url = f"http://127.0.0.1:{pod.config['exporterConfig']['port']}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=10) as answer:
            assert answer.status == 200, "the exporter does not answer on the host's network"

        proxies = {PROXY_PLUGIN_NAME: pod.socket}
        with PrivateContainerd(tmp_path / "logs-b", proxies).running() as node_b:
            node_b.import_image(test_image.archive, PROXY_PLUGIN_NAME)
            node_b.run_container(
                test_image.reference, "sleeper", ["/bin/sleep", "600"],
                snapshotter=PROXY_PLUGIN_NAME, detach=True,
            )  # fmt: skip
            exec_cat = ["tasks", "exec", "--exec-id", "cat-1", "sleeper", "cat", top_file]
            assert node_b.ctr(*exec_cat).stdout == top_content

            pod.stop()
            assert node_b.task_statuses().get("sleeper") == "RUNNING"
            exec_cat[3] = "cat-2"
            assert node_b.ctr(*exec_cat).stdout == top_content, "rootfs lost with obdsnap down"
            again_seconds = pod.start()
            exec_cat[3] = "cat-3"
            assert node_b.ctr(*exec_cat).stdout == top_content, "rootfs lost after the restart"
            reconnect_seconds = wait_for_proxy(node_b)
            fresh = node_b.run_container(
                test_image.reference, "fresh", ["cat", top_file], snapshotter=PROXY_PLUGIN_NAME
            )
            assert fresh.stdout == top_content, "no new container after the restart"

            for container_id in ("sleeper", "fresh"):
                node_b.remove_container(container_id)
            node_b.remove_image(test_image.reference)
            wait_for_empty(node_b, pod.socket)
        pod.stop()
        assert "Traceback" not in pod.output(), pod.output()

    root = Path(pod.config["root"])
    assert sorted(p.name for p in (root / "snapshots").iterdir()) == [], "snapshots left"
    configfs = [
        placed.host_path
        for wanted, placed in zip(spec.host_mounts, pod.mounts, strict=True)
        if wanted.mount_path == "/sys/kernel/config"
    ]
    attached = [p for path in configfs for p in Path(path).rglob("*")]
    assert not attached, f"left in configfs: {attached[:5]}"
    assert mount_points_under(scratch) == [scratch], mount_points_under(scratch)
    print(
        f"\nobdsnap pod: ready {ready_seconds:.2f}s after ctr run, "
        f"{again_seconds:.2f}s after the restart, reached by containerd B again "
        f"{reconnect_seconds:.2f}s later (readiness probe every "
        f"{spec.readiness.period_seconds:.0f}s in the manifest, polled every 0.2s here)"
    )


def test_placing_mounts_keeps_hostpath_mountpath_and_config_consistent(tmp_path: Path) -> None:
    spec = container_spec(render(BASE), CONTAINER)
    root = next(m for m in spec.host_mounts if m.mount_path == spec.config()["root"])
    placed = place_on_host(root, tmp_path)
    assert placed.host_path == placed.mount_path == node_config(spec, tmp_path)["root"]
    configfs = HostMount("/sys/kernel/config", "/sys/kernel/config", False, "rprivate")
    moved = place_on_host(replace(configfs, host_path="/nonexistent/config"), tmp_path)
    assert moved.host_path == f"{tmp_path}/nonexistent/config"
    assert moved.mount_path == f"{tmp_path}/sys/kernel/config"
    assert Path(moved.host_path).is_dir()
    dev = HostMount("/dev", "/dev", False, "rprivate")
    assert place_on_host(dev, tmp_path) == dev
