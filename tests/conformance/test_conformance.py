"""containerd 1.6's snapshotter conformance suite against obdsnap.

run.sh builds the Go test package next to this file and runs
snapshots/testsuite.SnapshotterSuite with a fresh server per test, started
from OBDSNAP_SERVER_CMD (default: python3 -m obdsnap serve ...).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .gotest_report import format_report, parse_go_test_verbose

pytestmark = [pytest.mark.root, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
RUN_SCRIPT = HERE / "run.sh"
GOCODE = Path(os.environ.get("GOCODE", "/usr/share/gocode"))
TESTSUITE_SOURCES = GOCODE / "src/github.com/containerd/containerd/snapshots/testsuite"
SUITE = "TestSnapshotterSuite"
# snapshots/testsuite.SnapshotterSuite of containerd 1.6, in its order.
SUITE_TESTS = (
    "Basic", "StatActive", "StatComitted", "TransitivityTest", "PreareViewFailingtest",
    "Update", "Remove", "Walk", "LayerFileupdate", "RemoveDirectoryInLowerLayer", "Chown",
    "DirectoryPermissionOnCommit", "RemoveIntermediateSnapshot", "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer", "Rename", "ViewReadonly", "StatInWalk", "CloseTwice",
    "RootPermission", "128LayersMount",
)  # fmt: skip
UPSTREAM_SKIPS = frozenset({"Rename"})
GO_TEST_TIMEOUT = "10m"
BUILD_TIMEOUT = 15 * 60
RUN_TIMEOUT = 12 * 60  # go test's own timeout plus time to report


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the conformance suite mounts snapshots: needs root"
    if shutil.which("go") is None:
        return "go not found (apt-get install golang-go)"
    if not TESTSUITE_SOURCES.is_dir():
        return (
            f"containerd sources missing in {GOCODE} "
            "(apt-get install golang-github-containerd-containerd-dev)"
        )
    return None


def run_script(args: list[str], timeout: float, env: dict[str, str]) -> tuple[int, str]:
    """Runs run.sh in its own process group; kills the whole group on timeout."""
    process = subprocess.Popen(
        [str(RUN_SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"run.sh {' '.join(args)} timed out after {timeout:.0f}s:\n{output[-8000:]}")
    return process.returncode, output


def test_containerd_snapshotter_suite(tmp_path: Path) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ)
    status, output = run_script(["--build"], BUILD_TIMEOUT, env)
    assert status == 0, f"building the conformance test binary failed:\n{output[-8000:]}"

    log_dir = tmp_path / "server-logs"
    env["OBDSNAP_TEST_LOG_DIR"] = str(log_dir)
    started = time.monotonic()
    # An empty SERVER_CMD makes run.sh use OBDSNAP_SERVER_CMD or obdsnap's default.
    status, output = run_script(["", "-timeout", GO_TEST_TIMEOUT], RUN_TIMEOUT, env)
    elapsed = time.monotonic() - started

    results = parse_go_test_verbose(output, SUITE)
    report = format_report(results, SUITE_TESTS, UPSTREAM_SKIPS)
    print(f"conformance suite: {elapsed:.1f}s, exit status {status}\n{report}")
    expected = {name: "SKIP" if name in UPSTREAM_SKIPS else "PASS" for name in SUITE_TESTS}
    actual = {name: results[name].status if name in results else "MISSING" for name in expected}
    summary = next(
        (line for line in reversed(output.splitlines()) if line.startswith("summary:")),
        "(no summary line: run.sh did not finish)",
    )
    unfinished = "MISSING" in actual.values() or "NO RESULT" in actual.values()
    output_tail = f"--- end of output ---\n{output[-3000:]}" if unfinished else ""
    assert actual == expected and status == 0, (
        f"conformance suite failed (server logs: {log_dir})\n{summary}\n{report}\n{output_tail}"
    )
