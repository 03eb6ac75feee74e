"""The filters a parse produces, and how each matches an object seen through a Lookup."""

from __future__ import annotations

import functools
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

Lookup: TypeAlias = Callable[[Sequence[str]], str | None]
FieldPath: TypeAlias = tuple[str, ...]


class Filter(ABC):
    """A parsed filter; ``match`` tells whether the object behind ``lookup`` is selected."""

    __slots__ = ()

    @abstractmethod
    def match(self, lookup: Lookup) -> bool: ...


@dataclass(frozen=True, slots=True)
class Always(Filter):
    def match(self, lookup: Lookup) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class All(Filter):
    filters: tuple[Filter, ...]

    def match(self, lookup: Lookup) -> bool:
        return all(selected.match(lookup) for selected in self.filters)


@dataclass(frozen=True, slots=True)
class Any(Filter):
    filters: tuple[Filter, ...]

    def match(self, lookup: Lookup) -> bool:
        return any(selected.match(lookup) for selected in self.filters)


@dataclass(frozen=True, slots=True)
class Present(Filter):
    fieldpath: FieldPath

    def match(self, lookup: Lookup) -> bool:
        return lookup(self.fieldpath) is not None


@dataclass(frozen=True, slots=True)
class Equal(Filter):
    fieldpath: FieldPath
    value: str

    def match(self, lookup: Lookup) -> bool:
        return lookup(self.fieldpath) == self.value


@dataclass(frozen=True, slots=True)
class NotEqual(Filter):
    """Matches a field that differs from ``value``; an absent field counts as "" (as in Go)."""

    fieldpath: FieldPath
    value: str

    def match(self, lookup: Lookup) -> bool:
        return (lookup(self.fieldpath) or "") != self.value


@dataclass(frozen=True, slots=True)
class Matches(Filter):
    """Matches a field in which ``pattern`` is found (anywhere, like Go's MatchString).

    As in containerd, an absent field is matched as "".
    """

    fieldpath: FieldPath
    pattern: str
    regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _compile_regex(self.pattern))

    def match(self, lookup: Lookup) -> bool:
        if self.regex is None:
            return False
        return self.regex.search(lookup(self.fieldpath) or "") is not None


ALWAYS = Always()


@functools.lru_cache(maxsize=256)
def _compile_regex(pattern: str) -> re.Pattern[str] | None:
    """Compile ``pattern``, or None if it is invalid: containerd then matches nothing."""
    try:
        # Byte escapes can leave invalid UTF-8 (kept as surrogates), which RE2 refuses.
        pattern.encode()
        with warnings.catch_warnings():
            # RE2 syntax such as [[:alpha:]] draws FutureWarnings from re at every compile.
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(pattern)
    except (UnicodeEncodeError, re.error):
        return None


def all_of(filters: Sequence[Filter]) -> Filter:
    return filters[0] if len(filters) == 1 else All(tuple(filters))


def any_of(filters: Sequence[Filter]) -> Filter:
    return filters[0] if len(filters) == 1 else Any(tuple(filters))
