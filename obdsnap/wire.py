"""Protobuf encoding of replies, with snapshot infos encoded once and reused, and
the codec that also decodes the hot calls' requests without betterproto (requests.py).

Snapshot records are immutable, so the wire bytes of an Info only change when
the record does. List of N snapshots then costs N dictionary lookups and one
join instead of building and encoding N betterproto messages (about 40 us
each), and Stat the same for one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from grpclib.encoding.proto import ProtoCodec

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.mounts import Mount
from obdsnap.requests import Request
from obdsnap.storage import Info

_LENGTH_DELIMITED_FIELD_1 = b"\x0a"  # field 1, wire type 2: `info` in every reply that has one


class Encoded:
    """A reply already in wire format; the codec sends its bytes as they are."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


EMPTY = Encoded(b"")  # google.protobuf.Empty, and any reply with every field at its default


class SnapshotsCodec(ProtoCodec):
    """grpclib's protobuf codec, passing pre-encoded replies through and reading
    the requests of requests.py itself."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, Encoded):
            return message.data
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if isinstance(message_type, type) and issubclass(message_type, Request):
            return message_type.decode(data)
        return super().decode(data, message_type)


def mounts_reply(mounts: Iterable[Mount]) -> Encoded:
    """A reply whose field 1 holds these mounts (Prepare, View, Mounts)."""
    return Encoded(b"".join(_field(b"\x0a", _encode_mount(mount)) for mount in mounts))


def _encode_mount(mount: Mount) -> bytes:
    """containerd.types.Mount: type 1, source 2, target 3, options 4 (repeated)."""
    parts = [
        _string_field(b"\x0a", mount.type),
        _string_field(b"\x12", mount.source),
        _string_field(b"\x1a", mount.target),
    ]
    parts.extend(_field(b"\x22", option.encode()) for option in mount.options)
    return b"".join(parts)


def _string_field(tag: bytes, value: str) -> bytes:
    """A proto3 string field; the empty string is left out."""
    return _field(tag, value.encode()) if value else b""


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + _varint(len(data)) + data


class InfoEncoder:
    """Wire bytes of Info messages, cached per snapshot key until its Info changes."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Info, bytes]] = {}

    def field(self, info: Info) -> bytes:
        """The Info as field 1 of a reply (StatSnapshotResponse, ListSnapshotsResponse...)."""
        cached = self._cache.get(info.name)
        if cached is not None and cached[0] is info:
            return cached[1]
        data = _field(_LENGTH_DELIMITED_FIELD_1, _encode_info(info))
        self._cache[info.name] = (info, data)
        return data

    def forget(self, key: str) -> None:
        self._cache.pop(key, None)

    def reply(self, infos: list[Info]) -> Encoded:
        """A reply whose field 1 holds these infos (repeated for List, one for Stat/Update)."""
        return Encoded(b"".join(self.field(info) for info in infos))


def info_message(info: Info) -> api.Info:
    return api.Info(
        name=info.name,
        parent=info.parent,
        kind=api.Kind(int(info.kind)),
        created_at=info.created_at,
        updated_at=info.updated_at,
        labels=dict(info.labels),
    )


def _encode_info(info: Info) -> bytes:
    """The Info message in field order, as betterproto writes it, with its timestamps to the
    nanosecond (betterproto takes timestamps as datetimes, which stop at microseconds)."""
    parts = [_string_field(b"\x0a", info.name), _string_field(b"\x12", info.parent)]
    if info.kind:
        parts.append(b"\x18" + _varint(int(info.kind)))
    parts.append(_timestamp_field(_CREATED_AT, info.created_ns))
    parts.append(_timestamp_field(_UPDATED_AT, info.updated_ns))
    parts.extend(_field(_LABEL, _map_entry(key, value)) for key, value in info.labels.items())
    return b"".join(parts)


def _map_entry(key: str, value: str) -> bytes:
    return _string_field(b"\x0a", key) + _string_field(b"\x12", value)


_LABEL = b"\x32"  # field 6, wire type 2: one entry of the labels map
_CREATED_AT = b"\x22"  # field 4, wire type 2
_UPDATED_AT = b"\x2a"  # field 5, wire type 2
_MASK64 = (1 << 64) - 1


def _timestamp_field(tag: bytes, nanos: int) -> bytes:
    """A google.protobuf.Timestamp field; zero seconds and nanos are left out as proto3 does."""
    seconds, nanos = divmod(nanos, 1_000_000_000)
    body = b""
    if seconds:
        body += b"\x08" + _varint(seconds & _MASK64)  # int64: negative as two's complement
    if nanos:
        body += b"\x10" + _varint(nanos)
    return tag + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
