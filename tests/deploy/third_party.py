"""Imports of test dependencies that need the ``packaging`` distribution.

The tests directory is on ``sys.path`` (conftest.py, and pytest for test packages),
so ``import packaging`` finds tests/packaging, obdsnap's packaging tests, and
kubernetes_validate's ``from packaging.version import Version`` fails. Import it
with the real ``packaging`` and put everything back afterwards.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

TESTS_DIR = Path(__file__).resolve().parents[1]


def import_with_packaging(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    shadowing = {
        key: sys.modules.pop(key)
        for key in list(sys.modules)
        if key == "packaging" or key.startswith("packaging.")
    }
    saved_path = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TESTS_DIR]
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved_path
        for key in [k for k in sys.modules if k == "packaging" or k.startswith("packaging.")]:
            del sys.modules[key]
        sys.modules.update(shadowing)
