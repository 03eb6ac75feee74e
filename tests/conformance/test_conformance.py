"""containerd 1.6's snapshotter conformance suite against obdsnap, in every rwMode.

run.sh builds the Go test package next to this file and runs
snapshots/testsuite.SnapshotterSuite with a fresh server per test, started
from OBDSNAP_SERVER_CMD (default: python3 -m obdsnap serve --config {config});
its {config} holds the boot config keys of OBDSNAP_EXTRA_CONFIG (run.sh
--config-extra). After each test the driver removes every snapshot left, so
obdsnap releases its devices, then stops the server.

The suite runs once per rwMode:

- ``overlayfs``: no extra config, as before;
- ``dir`` and ``dev``: a Prepare without a parent gets a writable overlaybd
  device of its own, made and committed by the simulator's stand-in tools, and
  its children get devices stacked on it. Both runs share one TCMU simulator.
  They run one test at a time (``-parallel 1``): every test has its own
  obdsnap server and root, so snapshot IDs start at 1 in each, and devices are
  named by snapshot ID in the one configfs (``core/user_999999999/dev_<ID>``,
  DESIGN §8). Tests side by side would take each other's devices, as two
  snapshotters on one host would. 128LayersMount chains 128 devices there and
  takes about 25 s.

Every test of the suite must pass in every mode, but Rename, which upstream skips.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support.mounts import deepest_first
from support.simulator import RunningSimulator, configfs_devices, force_clean, settings_on

from .gotest_report import SubtestResult, format_report, parse_go_test_verbose

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
RW_MODES = ("overlayfs", "dir", "dev")
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


def compare_with_expected(results: dict[str, SubtestResult]) -> list[str]:
    """How the results differ from: upstream skips skipped, every other test passed."""
    problems = []
    for name in SUITE_TESTS:
        result = results.get(name, SubtestResult(name, status="MISSING"))
        expected = "SKIP" if name in UPSTREAM_SKIPS else "PASS"
        if result.status != expected:
            problems.append(f"{name}: {result.status}, expected {expected}")
    problems += [
        f"{name}: not a test of the suite" for name in sorted(set(results) - set(SUITE_TESTS))
    ]
    return problems


@pytest.mark.parametrize("rw_mode", RW_MODES)
def test_containerd_snapshotter_suite(
    rw_mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ)
    env.pop("OBDSNAP_EXTRA_CONFIG", None)
    status, output = run_script(["--build"], BUILD_TIMEOUT, env)
    assert status == 0, f"building the conformance test binary failed:\n{output[-8000:]}"

    # An empty SERVER_CMD makes run.sh use OBDSNAP_SERVER_CMD or obdsnap's default.
    args = ["", "-timeout", GO_TEST_TIMEOUT]
    sim: RunningSimulator | None = None
    if rw_mode != "overlayfs":
        sim = request.getfixturevalue("simulator")
        args = [
            "--config-extra",
            json.dumps(settings_on(sim, rwMode=rw_mode)),
            *args,
            "-parallel",
            "1",
        ]
    log_dir = tmp_path / "server-logs"
    env["OBDSNAP_TEST_LOG_DIR"] = str(log_dir)
    # The suite's temp dirs (TMPDIR) and the servers' dirs, all in one short
    # place, so that whatever a run leaves mounted can be found and removed.
    scratch = Path(tempfile.mkdtemp(prefix="obdconf-", dir="/tmp"))
    env["TMPDIR"] = str(scratch / "suite")
    env["OBDSNAP_SERVER_TMPDIR"] = str(scratch / "srv")
    for directory in (scratch / "suite", scratch / "srv"):
        directory.mkdir()
    started = time.monotonic()
    try:
        status, output = run_script(args, RUN_TIMEOUT, env)
        elapsed = time.monotonic() - started
        # The driver removed every snapshot: obdsnap must have released all.
        server_mounts = deepest_first(scratch / "srv")
        devices = configfs_devices(sim) if sim is not None else []
        # The suite's own, from tests that fail between a mount and its unmount.
        suite_mounts = deepest_first(scratch / "suite")
    finally:
        force_clean(sim, [scratch])
        shutil.rmtree(scratch, ignore_errors=True)

    results = parse_go_test_verbose(output, SUITE)
    report = format_report(results, SUITE_TESTS, UPSTREAM_SKIPS)
    print(
        f"conformance suite, rwMode {rw_mode}: {elapsed:.1f}s, exit status {status}\n{report}"
        + (f"\nsuite mounts left by failed tests (removed): {suite_mounts}" if suite_mounts else "")
    )
    summary = next(
        (line for line in reversed(output.splitlines()) if line.startswith("summary:")),
        "(no summary line: run.sh did not finish)",
    )
    problems = compare_with_expected(results)
    if status != 0:
        problems.append(f"run.sh exited with {status}")
    problems += [f"obdsnap left mounted: {path}" for path in server_mounts]
    problems += [f"obdsnap left a device in configfs: {path}" for path in devices]
    unfinished = any(r.status == "NO RESULT" for r in results.values()) or summary.startswith("(")
    output_tail = f"--- end of output ---\n{output[-3000:]}" if unfinished else ""
    reproduce = f"reproduce: tests/conformance/run.sh {shlex.join(args)}"
    if sim is not None:
        reproduce += " (start a simulator on these paths first: run.sh --help)"
    assert not problems, (
        f"conformance suite, rwMode {rw_mode}: not as expected (server logs: {log_dir})\n"
        + "\n".join(problems)
        + f"\n{summary}\n{reproduce}\n{report}\n{output_tail}"
    )
