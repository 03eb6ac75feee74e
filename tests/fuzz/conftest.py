"""Fixtures of the fuzz tests: one live server per module, and a count of the cases run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from support.server_process import ServerProcess

# Cases and steps run, by kind; reported in the terminal summary.
FUZZ_COUNTS: Counter[str] = Counter()


def count(kind: str, n: int = 1) -> None:
    FUZZ_COUNTS[kind] += n


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FUZZ_COUNTS:
        return
    terminalreporter.section("fuzz cases run")
    for kind, n in sorted(FUZZ_COUNTS.items()):
        terminalreporter.write_line(f"{kind}: {n}")
    cases = sum(n for kind, n in FUZZ_COUNTS.items() if not kind.startswith("model replies"))
    terminalreporter.write_line(f"total cases and steps: {cases}")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One plain-overlayfs server for a whole module; it must survive and exit 0 on SIGTERM."""
    server = ServerProcess(tmp_path_factory.mktemp("fuzz")).start()
    try:
        yield server
        assert server.running(), f"obdsnap died during the fuzzing:\n{server.log()}"
    finally:
        status = server.stop()
    assert status == 0, f"obdsnap exited with {status} on SIGTERM:\n{server.log()}"
