"""Chaos: obdsnap SIGKILLed at random moments under 16 concurrent clients, restarted on its root.

Five variants, each one run (a module-scoped fixture) checked by one test per
invariant:

- ``overlayfs``: plain overlayfs layers, no devices;
- ``dir``: rwMode ``dir`` on the TCMU simulator, so every Prepare attaches,
  mkfs'es and mounts a writable device and every Commit detaches it and runs
  ``overlaybd-commit``: kills land inside those steps;
- ``dir-seal``: ``dir`` with ``writableCommit: "seal"``: Commit seals the layer
  and moves it into ``fs/``.
- ``asyncRemove``: ``overlayfs`` with ``asyncRemove``, and Cleanup called during
  the load: removed directories wait for a Cleanup that races the Prepares.
- ``turbo-convert``: unpacks with ``convert2turbo-oci`` whose ``layer.tar`` every Commit
  converts to TurboOCI (DESIGN-v1 §13), layers stacking on converted parents: kills land
  inside the conversion's tools.

Seeds are deterministic and logged (``CHAOS_SEED`` replays a run, ``CHAOS_KILLS``
sets the number of kills); the kill moments depend on timing, so a replay drives
the same choices, not necessarily the same interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

import pytest
from support.simulator import simulator_for_tests

from .chaos import (
    ACKED_PRESENT,
    ALL_OR_NOTHING,
    ASYNC_REMOVE,
    COMMIT_RETRY,
    DEVICE_ORPHANS,
    DIR,
    DIR_SEAL,
    INTENTS_SETTLED,
    ORPHANS,
    OVERLAY,
    REMOVED_GONE,
    TEARDOWN,
    Report,
    Settings,
    log,
    run_chaos,
)
from .turbo import TURBO

pytestmark = pytest.mark.root

SEED = int(os.environ.get("CHAOS_SEED", "20261130"))
# The dir variant's half-torn-down device window is a few ms per detach: 40 kills hit it
# about 4 times a run (a run without any hit, which would XPASS, is about 1 in 80).
KILLS = os.environ.get("CHAOS_KILLS")
OVERLAY_KILLS = int(KILLS or 25)
DIR_KILLS = int(KILLS or 40)
# A conversion runs four tools, a second or more on a busy machine: fewer clients, fewer
# and longer rounds, so that some finish and others are cut.
TURBO_KILLS = int(KILLS or 10)

SETTINGS = {
    OVERLAY: Settings(OVERLAY, SEED, OVERLAY_KILLS, min_delay=0.05, max_delay=0.4),
    # A dir-mode Prepare (overlaybd-create, attach, mkfs, mount) takes a few hundred
    # ms under this load: a longer window lets some finish and others be cut.
    DIR: Settings(DIR, SEED, DIR_KILLS, min_delay=0.3, max_delay=2.5),
    DIR_SEAL: Settings(DIR_SEAL, SEED, DIR_KILLS, min_delay=0.3, max_delay=2.5),
    ASYNC_REMOVE: Settings(
        ASYNC_REMOVE,
        SEED,
        OVERLAY_KILLS,
        min_delay=0.05,
        max_delay=0.4,
        cleanup_interval=0.05,
    ),
    TURBO: Settings(TURBO, SEED, TURBO_KILLS, min_delay=1.5, max_delay=4.5, clients=4),
}


_REPORTS: dict[str, Report] = {}


@pytest.fixture(scope="module")
def chaos(request: pytest.FixtureRequest) -> Iterator[Report]:
    """One run per variant, however pytest orders the tests that share it."""
    variant: str = request.param
    if variant not in _REPORTS:
        _REPORTS[variant] = run_variant(request, variant)
    yield _REPORTS[variant]


def run_variant(request: pytest.FixtureRequest, variant: str) -> Report:
    settings = SETTINGS[variant]
    log(f"chaos[{variant}]: seed {settings.seed}, {settings.kills} kills")
    if variant == OVERLAY:
        report = asyncio.run(run_chaos(settings, None))
    else:
        with contextlib.ExitStack() as stack:
            sim = stack.enter_context(simulator_for_tests())
            report = asyncio.run(run_chaos(settings, sim))
            try:
                stack.close()
            except AssertionError as exc:  # the simulator did not stop cleanly
                report.add(TEARDOWN, str(exc).splitlines()[0])
    details = [report.summary()]
    for category, found in sorted(report.violations.items()):
        details += [f"  {category}: {message}" for message in found[:5]]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            log("\n" + "\n".join(details))
    else:
        log("\n".join(details))
    return report


def violations(report: Report, category: str) -> str:
    found = report.violations.get(category, [])
    head = "\n".join(found[:15])
    return f"{len(found)} violation(s) of {category} ({report.summary()}):\n{head}"


DEVICES = [DIR, DIR_SEAL]
BOTH = [OVERLAY, *DEVICES, ASYNC_REMOVE]
# The variants whose invariants hold with the conversion variant's too.
EVERY = [*BOTH, TURBO]
SETTLED = [*DEVICES, TURBO]


@pytest.mark.parametrize("chaos", BOTH, indirect=True)
def test_survived_enough_kills(chaos: Report) -> None:
    assert chaos.kills >= 20, chaos.summary()
    assert chaos.acked["prepare"] > 0 and chaos.acked["commit"] > 0, chaos.summary()
    assert chaos.runtime < 300, chaos.summary()


@pytest.mark.parametrize("chaos", [TURBO], indirect=True)
def test_survived_enough_conversion_kills(chaos: Report) -> None:
    """Conversions acknowledged, cut by kills and retried, within the variant's time."""
    assert chaos.kills >= 10, chaos.summary()
    assert chaos.acked["prepare"] > 0 and chaos.acked["commit"] > 0, chaos.summary()
    assert chaos.runtime < 120, chaos.summary()


@pytest.mark.parametrize("chaos", EVERY, indirect=True)
def test_acknowledged_snapshots_survive(chaos: Report) -> None:
    """Prepared/committed with OK and not removed: listed, right kind/parent, Mounts, data."""
    assert not chaos.violations.get(ACKED_PRESENT), violations(chaos, ACKED_PRESENT)
    assert chaos.acked_live_found == chaos.acked_live_expected, chaos.summary()


@pytest.mark.parametrize("chaos", EVERY, indirect=True)
def test_acknowledged_removes_stay_gone(chaos: Report) -> None:
    assert not chaos.violations.get(REMOVED_GONE), violations(chaos, REMOVED_GONE)


@pytest.mark.parametrize("chaos", EVERY, indirect=True)
def test_unacknowledged_ops_all_or_nothing(chaos: Report) -> None:
    """A snapshot that is listed Stats fine, has its fs/ and Mounts: nothing half made."""
    assert not chaos.violations.get(ALL_OR_NOTHING), violations(chaos, ALL_OR_NOTHING)


@pytest.mark.parametrize("chaos", EVERY, indirect=True)
def test_cut_commit_can_be_retried(chaos: Report) -> None:
    assert not chaos.violations.get(COMMIT_RETRY), violations(chaos, COMMIT_RETRY)


@pytest.mark.parametrize("chaos", SETTLED, indirect=True)
def test_interrupted_operations_are_settled_at_start_up(chaos: Report) -> None:
    """Kills cut attaches, detaches and commits; start-up finishes or rolls back each one."""
    assert not chaos.violations.get(INTENTS_SETTLED), violations(chaos, INTENTS_SETTLED)
    assert sum(chaos.interrupted.values()) > 0, chaos.summary()


@pytest.mark.parametrize("chaos", EVERY, indirect=True)
def test_no_orphans_after_cleanup(chaos: Report) -> None:
    assert not chaos.violations.get(ORPHANS), violations(chaos, ORPHANS)


@pytest.mark.parametrize("chaos", SETTLED, indirect=True)
def test_no_device_orphans_after_cleanup(chaos: Report) -> None:
    assert not chaos.violations.get(DEVICE_ORPHANS), violations(chaos, DEVICE_ORPHANS)
    assert chaos.orphans_after_cleanup == 0, chaos.summary()


@pytest.mark.parametrize("chaos", EVERY, indirect=True)
def test_nothing_left_after_removing_everything(chaos: Report) -> None:
    assert not chaos.violations.get(TEARDOWN), violations(chaos, TEARDOWN)


@pytest.mark.parametrize("chaos", [ASYNC_REMOVE], indirect=True)
def test_cleanups_raced_the_load(chaos: Report) -> None:
    """DESIGN-v1 §9: Cleanup during Prepares, Commits and Removes, acknowledged many times."""
    assert chaos.acked["cleanup"] >= 10, chaos.summary()
    assert chaos.acked["remove"] > 0, chaos.summary()
