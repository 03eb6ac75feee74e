"""Fixtures of the TCMU simulator's tests: a running simulator and the protocol driver."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tcmusim.testing import RunningSimulator, missing_requirements, running_simulator  # noqa: E402

from .protocol import Protocol  # noqa: E402

MISSING = missing_requirements()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MISSING is None:
        return
    skip = pytest.mark.skip(reason=MISSING)
    for item in items:
        if "tests/sim/" in item.nodeid and "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    """One simulator per test module; knobs are reset before each test that uses it."""
    if MISSING is not None:
        pytest.skip(MISSING)
    with running_simulator(tmp_path_factory.mktemp("sim")) as simulator:
        yield simulator
        status = simulator.stop()
        assert status == 0, f"simulator exited with {status}:\n{simulator.log()}"
        assert simulator.loop_devices() == [], "loop devices left after shutdown"


@pytest.fixture
def proto(sim: RunningSimulator) -> Iterator[Protocol]:
    sim.control.clear()
    yield Protocol(sim.configfs, sim.sysfs)
    sim.control.clear()
