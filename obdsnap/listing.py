"""List: snapshot infos matched against containerd filters, in chunks of LIST_CHUNK."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from obdsnap import filters
from obdsnap.storage import Info, Kind

LIST_CHUNK = 100


def matching_chunks(infos: Iterable[Info], filter_strings: Sequence[str]) -> Iterator[list[Info]]:
    """Matching infos in chunks; a bad filter raises here, before the first chunk."""
    selected = filters.parse_all(filter_strings)
    return _chunks(infos, lambda info: selected.match(info_fields(info)))


def info_fields(info: Info) -> filters.Lookup:
    def lookup(path: Sequence[str]) -> str | None:
        if not path:
            return None
        field = path[0]
        if field == "name":
            return info.name
        if field == "parent":
            return info.parent
        if field == "kind":
            return info.kind.label if info.kind != Kind.UNKNOWN else None
        if field == "labels" and info.labels:
            return info.labels.get(".".join(path[1:]))
        return None

    return lookup


def _chunks(infos: Iterable[Info], keep: Callable[[Info], bool]) -> Iterator[list[Info]]:
    chunk: list[Info] = []
    for info in infos:
        if keep(info):
            chunk.append(info)
            if len(chunk) == LIST_CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
