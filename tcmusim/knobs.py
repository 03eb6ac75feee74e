"""Runtime knobs and fault injection, read from a JSON control file.

The file is consulted on every operation that needs a knob (it is re-parsed only
when its inode, size or mtime changed), so a test can flip faults while the
simulator runs. Every key is optional::

    {
      "open_latency": 0.5,          # seconds an ``enable`` write blocks before the open
      "appear_delay": 0.1,          # seconds between the LUN link and the sysfs disk
      "fail_open": "boom",          # open fails: result file "failed:boom", enable -> EIO
      "eagain": 3,                  # answer EAGAIN to the first 3 enable writes of a device
      "enable_errno": 22,           # enable fails at once with this errno, nothing opened
      "never_appear": true,         # the disk never shows up in sysfs
      "busy_after_appear": 0.1,     # seconds the new disk is held open O_EXCL (a prober):
                                    # mounts of it fail with EBUSY meanwhile
      "slow_io_ms": 20              # every read/write of the device's backing file sleeps
    }

A value may be restricted to some devices: ``{"value": V, "devices": ["dev_3", 4]}``
(an integer N means ``dev_N``, in any HBA; ``"user_7/dev_3"`` names the one of
HBA ``user_7``), or be a list of such objects, the first matching one winning.
Devices that no entry matches get the default (the command-line value for the
latencies, "off" for the faults).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tcmusim.knobs")

KNOB_TYPES: Mapping[str, type] = {
    "open_latency": float,
    "appear_delay": float,
    "fail_open": str,
    "eagain": int,
    "enable_errno": int,
    "never_appear": bool,
    "busy_after_appear": float,
    "slow_io_ms": float,
}


@dataclass(frozen=True)
class DeviceKnobs:
    """The knobs that apply to one device at one moment."""

    open_latency: float = 0.0
    appear_delay: float = 0.0
    fail_open: str | None = None
    eagain: int = 0
    enable_errno: int = 0
    never_appear: bool = False
    busy_after_appear: float = 0.0
    slow_io_ms: float = 0.0


def device_name(entry: object) -> str:
    """``3`` and ``"3"`` both name ``dev_3``; other strings are taken as they are."""
    if isinstance(entry, bool):
        raise ValueError(f"not a device: {entry!r}")
    if isinstance(entry, int) or (isinstance(entry, str) and entry.isdigit()):
        return f"dev_{int(entry)}"
    if isinstance(entry, str) and entry:
        return entry
    raise ValueError(f"not a device: {entry!r}")


def _check_value(key: str, value: object) -> object:
    expected = KNOB_TYPES[key]
    if value is None:
        return None
    if expected is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
        return value
    if expected is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    if value < 0:
        raise ValueError(f"{key} must not be negative")
    if expected is int:
        if int(value) != value:
            raise ValueError(f"{key} must be an integer")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class _Rule:
    value: object
    devices: frozenset[str] | None  # None: every device


def _parse_rules(key: str, raw: object) -> list[_Rule]:
    entries = raw if isinstance(raw, list) else [raw]
    rules: list[_Rule] = []
    for entry in entries:
        if isinstance(entry, dict):
            unknown = set(entry) - {"value", "devices"}
            if unknown or "value" not in entry:
                raise ValueError(f"{key}: an object needs 'value' and may have 'devices'")
            devices = entry.get("devices")
            if devices is not None and not isinstance(devices, list):
                raise ValueError(f"{key}: 'devices' must be a list")
            names = None if devices is None else frozenset(device_name(d) for d in devices)
            rules.append(_Rule(_check_value(key, entry["value"]), names))
        else:
            rules.append(_Rule(_check_value(key, entry), None))
    return rules


def parse_control(document: object) -> dict[str, list[_Rule]]:
    if not isinstance(document, dict):
        raise ValueError("the control file must hold a JSON object")
    parsed: dict[str, list[_Rule]] = {}
    for key, raw in document.items():
        if key not in KNOB_TYPES:
            log.warning("control file: unknown knob %r ignored", key)
            continue
        parsed[key] = _parse_rules(key, raw)
    return parsed


class Knobs:
    """Command-line defaults overridden by the control file, per device."""

    def __init__(
        self, control_file: Path | None, *, open_latency: float = 0.0, appear_delay: float = 0.0
    ) -> None:
        self._path = control_file
        self._defaults = DeviceKnobs(open_latency=open_latency, appear_delay=appear_delay)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._rules: dict[str, list[_Rule]] = {}

    def _current_rules(self) -> dict[str, list[_Rule]]:
        if self._path is None:
            return {}
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            with self._lock:
                self._stamp, self._rules = None, {}
            return {}
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp == self._stamp:
                return self._rules
            try:
                text = self._path.read_text()
                rules = parse_control(json.loads(text)) if text.strip() else {}
            except (OSError, ValueError) as exc:
                # A half-written file must not wipe the faults in force: keep the last good one.
                log.error(
                    "control file %s unusable, keeping the previous knobs: %s", self._path, exc
                )
                return self._rules
            self._stamp, self._rules = stamp, rules
            log.info("control file reloaded: %s", text.strip() or "{}")
            return rules

    def for_device(self, device: str) -> DeviceKnobs:
        """The knobs of ``device``: ``dev_3``, or ``user_7/dev_3`` for the one of that HBA."""
        names = {device, device.rpartition("/")[2]}
        values: dict[str, Any] = {}
        for key, rules in self._current_rules().items():
            for rule in rules:
                if rule.devices is None or names & rule.devices:
                    values[key] = rule.value
                    break
        defaults = self._defaults
        return DeviceKnobs(
            open_latency=_or(values.get("open_latency"), defaults.open_latency),
            appear_delay=_or(values.get("appear_delay"), defaults.appear_delay),
            fail_open=values.get("fail_open") or None,
            eagain=values.get("eagain") or 0,
            enable_errno=values.get("enable_errno") or 0,
            never_appear=bool(values.get("never_appear")),
            busy_after_appear=values.get("busy_after_appear") or 0.0,
            slow_io_ms=values.get("slow_io_ms") or 0.0,
        )


def _or(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default
