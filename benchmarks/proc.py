"""Figures of a process from /proc: its memory, its CPU time and its children's.

``children`` (cutime + cstime) is what the kernel adds to a process when it
reaps a child: the rusage of the tools obdsnap spawns, once each has exited
and been waited for. A tool still running at the second sample is not in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    own: float  # utime + stime, seconds
    children: float  # cutime + cstime, seconds

    def __sub__(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(self.own - earlier.own, self.children - earlier.children)


def parse_stat(text: str) -> CpuTimes:
    """The CPU fields of a /proc/<pid>/stat line (the name, in parentheses, may hold spaces)."""
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime..cstime are fields 14..17.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return CpuTimes((utime + stime) / TICKS, (cutime + cstime) / TICKS)


def cpu_times(pid: int) -> CpuTimes:
    with open(f"/proc/{pid}/stat") as stat:
        return parse_stat(stat.read())


def per_device_ms(obdsnap: CpuTimes, simulator: CpuTimes, devices: int) -> dict[str, float | None]:
    """CPU per attached device, in milliseconds, by where it was spent."""
    if not devices:
        return dict.fromkeys(("obdsnap", "simulator", "children", "total"), None)
    children = obdsnap.children + simulator.children
    total = obdsnap.own + simulator.own + children
    return {
        name: round(seconds * 1000 / devices, 2)
        for name, seconds in (
            ("obdsnap", obdsnap.own),
            ("simulator", simulator.own),
            ("children", children),
            ("total", total),
        )
    }


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])  # "12345 kB"
    if len(values) != 2:
        raise RuntimeError(f"no VmRSS/VmHWM in /proc/{pid}/status (a zombie?)")
    return values
