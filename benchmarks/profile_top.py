"""The heaviest functions of a py-spy profile in its raw (collapsed) format.

    python3 benchmarks/profile_top.py FILE [FILE ...] [--top 12] [--json]

A raw profile has one stack a line, frames separated by ';', then its sample
count. For each function this prints the share of samples in which it is on
the stack (`total`, a function counted once per stack) and at the top of it
(`self`). Several files (the rounds of one measurement) are added up.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# "name (path:line)": the line number is dropped so that one function is one row.
FRAME = re.compile(r"^(?P<name>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
# Where a library lives is noise: "asyncio/runners.py", "grpclib/server.py".
LIBRARY = re.compile(r"^.*/(site-packages|lib/python3\.\d+)/")


@dataclass(frozen=True)
class Profile:
    samples: int
    total: Counter[str]
    self: Counter[str]


def function_of(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = LIBRARY.sub("", match["path"])
    return f"{match['name']} ({path})"


def read_profile(lines: Iterable[str]) -> Profile:
    samples = 0
    total: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = [function_of(frame) for frame in stack.split(";") if frame]
        samples += count
        for function in set(functions):
            total[function] += count
        if functions:
            own[functions[-1]] += count
    return Profile(samples, total, own)


def top_rows(profile: Profile, top: int) -> list[dict[str, object]]:
    def share(count: int) -> float:
        return round(100 * count / profile.samples, 1) if profile.samples else 0.0

    return [
        {"function": name, "total_pct": share(count), "self_pct": share(profile.self[name])}
        for name, count in profile.total.most_common(top)
    ] + [
        {"function": name, "total_pct": share(profile.total[name]), "self_pct": share(count)}
        for name, count in profile.self.most_common(top)
        if name not in dict(profile.total.most_common(top))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=12, help="rows by total, then by self")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lines: list[str] = []
    for path in args.files:
        lines += path.read_text().splitlines()
    profile = read_profile(lines)
    rows = top_rows(profile, args.top)
    if args.json:
        print(json.dumps({"samples": profile.samples, "rows": rows}, indent=2))
        return
    print(f"{profile.samples} samples")
    print(f"{'total%':>7} {'self%':>6}  function")
    for row in rows:
        print(f"{row['total_pct']:>7} {row['self_pct']:>6}  {row['function']}")


if __name__ == "__main__":
    main()
