"""deploy/kubernetes: every kustomization renders, validates against the Kubernetes API
schemas, and keeps the DaemonSet consistent with obdsnap's config."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest

from obdsnap.config import BootConfig, parse_config
from obdsnap.server import DRAIN_TIMEOUT_S

from .kustomize import KUBERNETES_DIR, REPO_ROOT, Manifest, find, kustomizations, render

KUBERNETES_VERSION = "1.30"
NAMESPACE = "obdsnap-system"
CONFIG_DIR = "/etc/overlaybd-snapshotter"
BINARY = "/usr/bin/obdsnap"

KUSTOMIZATIONS = kustomizations()


def kustomization_id(path: Path) -> str:
    return str(path.relative_to(KUBERNETES_DIR))


def test_the_base_and_an_overlay_are_found() -> None:
    names = {kustomization_id(path) for path in KUSTOMIZATIONS}
    assert {"base", "overlays/example"} <= names


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=kustomization_id)
def test_every_object_is_valid_for_the_kubernetes_version(directory: Path) -> None:
    objects = render(directory)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=kustomization_id)
def test_the_daemonset_keeps_to_obdsnap_config(directory: Path) -> None:
    assert daemonset_problems(render(directory)) == []


def test_the_base_runs_the_image_of_this_version() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    version = pyproject["project"]["version"]
    spec = pod_spec(render(KUBERNETES_DIR / "base"))
    for container in spec["containers"] + spec.get("initContainers", []):
        assert container["image"] == f"localhost/obdsnap:{version}"
        assert container["imagePullPolicy"] == "IfNotPresent"


def test_the_example_overlay_moves_the_root_and_socket_and_the_image() -> None:
    base = render(KUBERNETES_DIR / "base")
    example = render(KUBERNETES_DIR / "overlays" / "example")
    assert boot_config(example).root != boot_config(base).root
    assert boot_config(example).address != boot_config(base).address
    assert main_container(pod_spec(example))["image"] != main_container(pod_spec(base))["image"]


@pytest.mark.parametrize(
    ("file", "old", "new", "problem"),
    [
        (
            "overlays/example/config.json",
            '"root": "/data/containerd/',
            '"root": "/srv/containerd/',
            "root /srv/containerd/io.containerd.snapshotter.v1.overlaybd: no hostPath volume",
        ),
        (
            "overlays/example/paths.yaml",
            "hostPath/path\n  value: /run/obdsnap\n",
            "hostPath/path\n  value: /run/obdsnap2\n",
            "socket directory /run/obdsnap: no hostPath volume",
        ),
        (
            "base/daemonset.yaml",
            "mountPropagation: Bidirectional",
            "mountPropagation: HostToContainer",
            "mountPropagation HostToContainer, not Bidirectional",
        ),
        (
            "base/daemonset.yaml",
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds: 10",
            "terminationGracePeriodSeconds 10",
        ),
        (
            "base/daemonset.yaml",
            "mountPath: /etc/overlaybd-snapshotter\n",
            "mountPath: /etc/obdsnap\n",
            "the ConfigMap is mounted at ['/etc/obdsnap']",
        ),
        (
            "base/daemonset.yaml",
            "timeoutSeconds: 20",
            "timeoutSeconds: 15",
            "livenessProbe: timeoutSeconds not longer than health --timeout 15",
        ),
    ],
    ids=["config-root", "socket-hostpath", "propagation", "grace", "config-mount", "probe-timeout"],
)
def test_a_broken_copy_of_the_example_is_rejected(
    tmp_path: Path, file: str, old: str, new: str, problem: str
) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES_DIR, copy)
    path = copy / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {file} once"
    path.write_text(text.replace(old, new))
    problems = daemonset_problems(render(copy / "overlays" / "example"))
    assert any(problem in line for line in problems), problems


# The consistency check.


def pod_spec(objects: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "DaemonSet", "obdsnap")["spec"]["template"]["spec"]
    return spec


def main_container(spec: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [c for c in spec["containers"] if c["name"] == "obdsnap"]
    assert len(containers) == 1, "no container obdsnap"
    return containers[0]


def boot_config(objects: list[Manifest]) -> BootConfig:
    config_map = find(objects, "ConfigMap", "obdsnap-config")
    return parse_config(json.loads(config_map["data"]["config.json"])).checked()


def daemonset_problems(objects: list[Manifest]) -> list[str]:
    """What keeps the rendered DaemonSet from running obdsnap as its config says, one line each."""
    daemonset = find(objects, "DaemonSet", "obdsnap")
    spec = pod_spec(objects)
    container = main_container(spec)
    config = boot_config(objects)
    problems: list[str] = []
    if daemonset["metadata"].get("namespace") != NAMESPACE:
        problems.append(f"namespace {daemonset['metadata'].get('namespace')}, not {NAMESPACE}")
    problems += pod_problems(daemonset["spec"], spec)
    problems += container_problems(container)
    problems += config_mount_problems(spec, container)
    problems += host_path_problems(spec, container, config)
    problems += metrics_problems(daemonset, container, config)
    return problems


def pod_problems(daemonset_spec: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    problems = []
    if spec.get("hostNetwork") is not True:
        problems.append("hostNetwork is not true")
    if spec.get("priorityClassName") != "system-node-critical":
        problems.append(f"priorityClassName {spec.get('priorityClassName')}")
    if {"operator": "Exists"} not in spec.get("tolerations", []):
        problems.append("no toleration of every taint (operator Exists without a key)")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if not grace > DRAIN_TIMEOUT_S:
        problems.append(f"terminationGracePeriodSeconds {grace}: not longer than the drain")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("the service account token is mounted")
    strategy = daemonset_spec.get("updateStrategy", {})
    if strategy.get("type") != "RollingUpdate":
        problems.append(f"updateStrategy {strategy.get('type')}, not RollingUpdate")
    if "maxUnavailable" not in strategy.get("rollingUpdate", {}):
        problems.append("no rollingUpdate.maxUnavailable")
    return problems


def container_problems(container: dict[str, Any]) -> list[str]:
    problems = []
    if container.get("securityContext", {}).get("privileged") is not True:
        problems.append("the container is not privileged")
    if not container.get("resources", {}).get("requests"):
        problems.append("no resource requests")
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        if name not in container:
            problems.append(f"no {name}")
            continue
        probe = container[name]
        command = probe["exec"]["command"]
        if command[:2] != [BINARY, "health"]:
            problems.append(f"{name}: {command} is not obdsnap health")
        timeout = float(option(command, "--timeout") or "5")
        if not probe.get("timeoutSeconds", 1) > timeout:
            problems.append(f"{name}: timeoutSeconds not longer than health --timeout {timeout:g}")
    liveness = container.get("livenessProbe", {})
    patience = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
    if liveness and patience < 120:
        problems.append(f"livenessProbe restarts obdsnap after {patience} s without an answer")
    return problems


def config_mount_problems(spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The ConfigMap is mounted where the command and every probe read the config."""
    problems = []
    config_volumes = {
        v["name"] for v in spec["volumes"] if v.get("configMap", {}).get("name") == "obdsnap-config"
    }
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in config_volumes]
    if mounts != [CONFIG_DIR]:
        problems.append(f"the ConfigMap is mounted at {mounts}, not {CONFIG_DIR}")
    config_file = f"{CONFIG_DIR}/config.json"
    if container["command"] != [BINARY, "serve", "--config", config_file]:
        problems.append(f"command {container['command']}")
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container.get(name, {}).get("exec", {}).get("command", [])
        if option(command, "--config") != config_file:
            problems.append(f"{name}: --config {option(command, '--config')}, not {config_file}")
    return problems


def host_path_problems(
    spec: dict[str, Any], container: dict[str, Any], config: BootConfig
) -> list[str]:
    """Each host path is mounted at the same path, and the config's paths are host paths."""
    problems = []
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] in host_paths}
    for mount_path, mount in mounts.items():
        if host_paths[mount["name"]] != mount_path:
            problems.append(f"{mount['name']}: host {host_paths[mount['name']]} at {mount_path}")
    required = {
        f"root {config.root}": (config.root, "Bidirectional", False),
        "socket directory": (str(PurePosixPath(config.address).parent), None, False),
        "configfs": (config.configfs_root, None, False),
        "/dev": ("/dev", None, False),
        "overlaybd tools": (str(PurePosixPath(config.overlaybd_util_bin_dir).parent), None, False),
        "kernel modules": ("/lib/modules", None, True),
    }
    for what, (path, propagation, read_only) in required.items():
        mount = mounts.get(path)
        if what == "socket directory":
            what = f"socket directory {path}"
        if mount is None or host_paths[mount["name"]] != path:
            problems.append(f"{what}: no hostPath volume mounted at {path}")
            continue
        actual = mount.get("mountPropagation", "None")
        if propagation is not None and actual != propagation:
            problems.append(f"{what}: mountPropagation {actual}, not {propagation}")
        if mount.get("readOnly", False) != read_only:
            problems.append(f"{what}: readOnly {mount.get('readOnly', False)}, not {read_only}")
    return problems


def metrics_problems(
    daemonset: dict[str, Any], container: dict[str, Any], config: BootConfig
) -> list[str]:
    """Prometheus finds the exporter: on, on every interface of the node, at the annotated port."""
    problems = []
    exporter = config.exporter
    if not exporter.enable:
        problems.append("the exporter is off")
    if exporter.host in ("127.0.0.1", "localhost", "::1"):
        problems.append(f"the exporter listens on {exporter.host} only")
    annotations = daemonset["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true":
        problems.append("no prometheus.io/scrape annotation")
    if annotations.get("prometheus.io/port") != str(exporter.port):
        problems.append(f"prometheus.io/port {annotations.get('prometheus.io/port')}")
    if annotations.get("prometheus.io/path", "/metrics") != exporter.uri_prefix:
        problems.append(f"prometheus.io/path {annotations.get('prometheus.io/path')}")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if ports.get("metrics") != exporter.port:
        problems.append(f"container port metrics {ports.get('metrics')}, not {exporter.port}")
    return problems


def option(command: list[str], name: str) -> str | None:
    """The value after ``name`` in an argument list."""
    if name in command[:-1]:
        return command[command.index(name) + 1]
    return None
