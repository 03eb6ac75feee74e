"""The go test output parser and the report, on real output of the suite."""

from __future__ import annotations

from .gotest_report import format_report, parse_go_test_verbose

# Abridged from a run in rwMode dir: two parallel subtests, a diff, then a directory dump.
OUTPUT = """\
=== RUN   TestSnapshotterSuite
=== RUN   TestSnapshotterSuite/Basic
=== PAUSE TestSnapshotterSuite/Basic
=== RUN   TestSnapshotterSuite/Chown
=== PAUSE TestSnapshotterSuite/Chown
=== CONT  TestSnapshotterSuite/Basic
    helpers_unix.go:33: unmount /tmp/s-1/work/preparing
    testsuite.go:198: failure reason: directory diff between /tmp/fstest1 and /tmp/s-1/work/next
        + /lost+found
    helpers.go:66: drwx------       4096 /tmp/s-1
=== CONT  TestSnapshotterSuite/Chown
    issues.go:111: Check snapshots failed: snapshot check failed on snapshot 2: check directory \
failed: directory diff between /tmp/s-2/work/flat1 and /tmp/s-2/work/check2
        - /lost+found
        ~ /opt: uid 1 != 0
--- FAIL: TestSnapshotterSuite (0.00s)
    --- FAIL: TestSnapshotterSuite/Basic (0.51s)
    --- FAIL: TestSnapshotterSuite/Chown (0.52s)
"""


def test_output_is_attributed_to_its_subtest() -> None:
    results = parse_go_test_verbose(OUTPUT, "TestSnapshotterSuite")
    assert any("+ /lost+found" in line for line in results["Basic"].output)
    assert any("~ /opt: uid 1 != 0" in line for line in results["Chown"].output)
    assert not any("~ /opt" in line for line in results["Basic"].output)
    assert (results["Basic"].status, results["Chown"].status) == ("FAIL", "FAIL")


def test_report_shows_the_output_of_failures() -> None:
    results = parse_go_test_verbose(OUTPUT, "TestSnapshotterSuite")
    report = format_report(results, ["Basic", "Chown"], ())
    assert "--- Chown: FAIL" in report and "--- Basic: FAIL" in report
    assert "<-- problem" in report
