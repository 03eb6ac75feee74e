"""obdsnap's DaemonSet as ``kubectl kustomize`` renders it, and the ``ctr run`` that runs its
container the way a kubelet would.

The test reads the container spec from the manifest, so the manifest and what is
run under containerd cannot drift apart.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Kubernetes' mountPropagation as the propagation option of a bind mount.
PROPAGATION = {"Bidirectional": "rshared", "HostToContainer": "rslave", "None": "rprivate"}


@dataclass(frozen=True)
class Probe:
    command: list[str]
    period_seconds: float
    timeout_seconds: float
    failure_threshold: int


@dataclass(frozen=True)
class HostMount:
    """A hostPath volume and where the container mounts it."""

    host_path: str
    mount_path: str
    read_only: bool
    propagation: str

    def options(self) -> str:
        return ":".join(["rbind", "ro" if self.read_only else "rw", self.propagation])


@dataclass(frozen=True)
class ContainerSpec:
    """What of the DaemonSet's container a kubelet turns into a runtime spec."""

    image: str
    command: list[str]
    privileged: bool
    host_network: bool
    host_mounts: list[HostMount]
    config_mount_path: str
    config_files: dict[str, str]
    readiness: Probe
    liveness: Probe
    startup: Probe | None

    def config(self) -> dict[str, Any]:
        loaded = json.loads(self.config_files["config.json"])
        assert isinstance(loaded, dict)
        return loaded


def render(kustomization: Path) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize`` renders from a kustomization directory."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize {kustomization}: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def container_spec(documents: Sequence[dict[str, Any]], container_name: str) -> ContainerSpec:
    """The DaemonSet container ``container_name``, its volumes resolved."""
    (daemonset,) = [d for d in documents if d["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == container_name]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    config_maps = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ConfigMap"}
    host_mounts: list[HostMount] = []
    config_mount_path, config_files = "", {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            propagation = PROPAGATION[mount.get("mountPropagation", "None")]
            host_mounts.append(
                HostMount(
                    volume["hostPath"]["path"],
                    mount["mountPath"],
                    bool(mount.get("readOnly", False)),
                    propagation,
                )
            )
        elif "configMap" in volume:
            config_mount_path = mount["mountPath"]
            config_files = dict(config_maps[volume["configMap"]["name"]]["data"])
        else:
            raise AssertionError(f"volume {mount['name']}: neither hostPath nor configMap")
    return ContainerSpec(
        image=container["image"],
        command=[*container.get("command", []), *container.get("args", [])],
        privileged=bool(container.get("securityContext", {}).get("privileged", False)),
        host_network=bool(pod.get("hostNetwork", False)),
        host_mounts=host_mounts,
        config_mount_path=config_mount_path,
        config_files=config_files,
        readiness=_probe(container["readinessProbe"]),
        liveness=_probe(container["livenessProbe"]),
        startup=_probe(container["startupProbe"]) if "startupProbe" in container else None,
    )


def _probe(probe: dict[str, Any]) -> Probe:
    """An exec probe, with Kubernetes' defaults where the manifest says nothing."""
    return Probe(
        command=list(probe["exec"]["command"]),
        period_seconds=float(probe.get("periodSeconds", 10)),
        timeout_seconds=float(probe.get("timeoutSeconds", 1)),
        failure_threshold=int(probe.get("failureThreshold", 3)),
    )


def ctr_run_options(
    spec: ContainerSpec, mounts: Sequence[HostMount], config_dir: Path
) -> list[str]:
    """The ``ctr run`` options of the container: ``mounts`` are its host mounts as placed on
    this host, ``config_dir`` holds the ConfigMap's files."""
    options = []
    if spec.privileged:
        options.append("--privileged")
    if spec.host_network:
        options.append("--net-host")
    for mount in mounts:
        options += [
            "--mount",
            f"type=bind,src={mount.host_path},dst={mount.mount_path},options={mount.options()}",
        ]
    options += [
        "--mount",
        f"type=bind,src={config_dir},dst={spec.config_mount_path},options=rbind:ro:rprivate",
    ]
    return options


# Paths obdsnap uses only inside its container: it never names them to containerd or
# overlaybd-tcmu, so they keep their mountPath wherever the host's side is.
CONTAINER_ONLY_PATHS = ("/dev", "/lib/modules", "/sys/kernel/config")


def node_path(path: str, scratch: Path) -> str:
    """Where the test puts the node path ``path``: the same under ``scratch`` on the host, in
    the container and in the config, since obdsnap's answers name host paths."""
    return f"{scratch}{path}"


def place_on_host(mount: HostMount, scratch: Path) -> HostMount:
    """``mount`` as this test host runs it, without touching the host's real node paths.

    The root, the socket directory and /opt/overlaybd are shared with processes
    outside the container (containerd mounts what obdsnap returns, overlaybd-tcmu
    reads its configs): both sides move to ``node_path``. The container-only paths
    stay as they are where this host has them. Where it does not (this kernel has
    no /sys/kernel/config, a build host may have no /lib/modules), an empty
    directory at ``node_path`` stands in on both sides: runc cannot create the
    mount point inside /sys, and obdsnap then finds, as on the host, no such path.
    """
    if mount.mount_path in CONTAINER_ONLY_PATHS and Path(mount.host_path).is_dir():
        return mount
    placed = node_path(mount.host_path, scratch)
    Path(placed).mkdir(parents=True, exist_ok=True)
    return HostMount(
        placed, node_path(mount.mount_path, scratch), mount.read_only, mount.propagation
    )
