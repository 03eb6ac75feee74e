"""Human-readable sizes as the Go snapshotter reads them (docker/go-units ``RAMInBytes``).

``rootfsQuota`` and the ``disk_quota`` label are binary sizes: ``10g``,
``512MiB``, ``1.5g``, ``4096`` (bytes), with an optional space before the unit.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^(\d+(\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_BINARY_MULTIPLES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def ram_in_bytes(text: str) -> int:
    """The size in bytes, truncated as Go truncates; ValueError with go-units' message."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"invalid size: '{text}'")
    number = match.group(1)
    try:
        size = float(number)
    except ValueError:
        raise ValueError(f'strconv.ParseFloat: parsing "{number}": invalid syntax') from None
    return int(size * _BINARY_MULTIPLES.get((match.group(3) or "").lower(), 1))
