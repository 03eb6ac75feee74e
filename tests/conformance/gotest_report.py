"""Per-subtest results from `go test -v` output, and a readable report of them."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

_PROGRESS = re.compile(r"^=== (?:RUN|CONT|PAUSE|NAME)\s+(\S+)")
_RESULT = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+) \((\d+(?:\.\d+)?)s\)")
# containerd's testutil: directory dumps on failure and unmount progress.
_NOISE = re.compile(r"^\s+helpers(?:_unix)?\.go:\d+: ")
# continuity's fstest.CheckDirectoryEqual: "directory diff between A and B"
# then one line per path, "+ /added", "- /deleted" or "~ /updated: ...".


@dataclass
class SubtestResult:
    name: str
    status: str = "NO RESULT"  # PASS, FAIL, SKIP, or never finished
    seconds: float | None = None
    output: list[str] = field(default_factory=list)


def parse_go_test_verbose(text: str, parent: str) -> dict[str, SubtestResult]:
    """Results of parent's subtests by short name ("Basic" for "<parent>/Basic").

    Output lines are attributed to the subtest that the last "=== RUN/CONT"
    line named, which is how `go test -v` interleaves parallel subtests.
    """
    prefix = parent + "/"
    results: dict[str, SubtestResult] = {}
    current: SubtestResult | None = None

    def subtest(full_name: str) -> SubtestResult | None:
        if not full_name.startswith(prefix):
            return None
        short = full_name.removeprefix(prefix)
        return results.setdefault(short, SubtestResult(short))

    for line in text.splitlines():
        if progress := _PROGRESS.match(line):
            current = subtest(progress.group(1))
        elif finished := _RESULT.match(line):
            status, full_name, seconds = finished.groups()
            result = subtest(full_name)
            if result is not None:
                result.status, result.seconds = status, float(seconds)
            current = result
        elif current is not None:
            current.output.append(line)
    return results


def format_report(
    results: dict[str, SubtestResult],
    expected: Iterable[str],
    allowed_skips: Collection[str],
    tail_lines: int = 30,
) -> str:
    """One line per subtest (expected ones first), then the output of the bad ones."""
    names = list(expected) + sorted(set(results) - set(expected))
    lines = []
    bad = []
    for name in names:
        result = results.get(name, SubtestResult(name, status="MISSING"))
        seconds = "" if result.seconds is None else f"{result.seconds:.2f}s"
        note = ""
        if result.status == "SKIP" and name in allowed_skips:
            note = "(skipped upstream)"
        elif result.status != "PASS":
            note = "<-- problem"
            bad.append(result)
        lines.append(f"  {result.status:<9} {name:<30} {seconds:>8} {note}".rstrip())
    for result in bad:
        relevant = [line for line in result.output if not _NOISE.match(line)]
        output = relevant[-tail_lines:]
        omitted = len(result.output) - len(relevant)
        lines.append(
            f"--- {result.name}: {result.status}, last {len(output)} output lines"
            f" (without {omitted} lines of directory dumps and unmounts) ---"
        )
        lines.extend(output or ["(no output)"])
    return "\n".join(lines)
