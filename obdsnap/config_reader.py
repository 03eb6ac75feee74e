"""Typed reading of config.json's objects, as Go's encoding/json reads them into a struct."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

log = logging.getLogger("obdsnap.config")

T = TypeVar("T")


class ConfigError(Exception):
    """A config that cannot be used; the message names the offending key."""


class Reader:
    """Typed access to one JSON object; remembers which keys were read.

    Keys match case-insensitively when there is no exact match, as Go's
    encoding/json matches them, so ``"RwMode"`` means what it means to Go.
    """

    def __init__(self, raw: Mapping[str, Any], prefix: str) -> None:
        self._raw = raw
        self._prefix = prefix
        self._read: set[str] = set()

    def _find(self, key: str) -> str | None:
        if key in self._raw:
            return key
        folded = key.casefold()
        return next((name for name in self._raw if name.casefold() == folded), None)

    def get(self, key: str, kind: type[T], default: T) -> T:
        found = self._find(key)
        if found is None:
            return default
        self._read.add(found)
        key = found
        if self._raw[key] is None:
            return default
        value = self._raw[key]
        # bool is an int in Python; JSON true is not a port number.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f'config: "{self._prefix}{key}": expected {_json_type(kind)}, '
                f"got {json.dumps(value)}"
            )
        return value

    def get_list(self, key: str) -> list[Any] | None:
        """A JSON array; None when the key is absent, [] when it is null (Go empties a slice)."""
        found = self._find(key)
        if found is None:
            return None
        self._read.add(found)
        value = self._raw[found]
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(
                f'config: "{self._prefix}{found}": expected an array, got {json.dumps(value)}'
            )
        return value

    def warn_unknown(self) -> None:
        for key in sorted(set(self._raw) - self._read):
            log.warning("config: ignoring unknown key %r", self._prefix + key)


def _json_type(kind: type) -> str:
    names: dict[type, str] = {
        bool: "a boolean",
        int: "an integer",
        str: "a string",
        dict: "an object",
    }
    return names.get(kind, "a value")
