"""The kustomizations under deploy/kubernetes, rendered with ``kubectl kustomize``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"

Manifest = dict[str, Any]


def kustomizations(top: Path = KUBERNETES_DIR) -> list[Path]:
    """Every directory under ``top`` that kustomize can build: the base and each overlay."""
    return sorted(path.parent for path in top.rglob("kustomization.yaml"))


def render(directory: Path) -> list[Manifest]:
    """The objects ``kubectl kustomize`` makes of ``directory``; the test skips without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise AssertionError(f"expected one {kind} {name}, found {len(matches)}")
    return matches[0]
