"""The requests of the hot calls, decoded from protobuf without betterproto.

A betterproto message costs 30-70 us to decode (most of it building the
object); these requests are a few strings and a label map, read here in a few
microseconds into plain objects with the same field names. A body this reader
does not take as it is (an unexpected wire type, a truncated field, bytes that
are not UTF-8) is decoded by betterproto instead, so a malformed request gets
the same answer as before and an odd but valid one the same fields.
"""

from __future__ import annotations

from typing import Any, ClassVar

from betterproto import Message

from obdsnap.genproto.containerd.services.snapshots import v1 as api

_VARINT = 0
_LENGTH_DELIMITED = 2


class Malformed(Exception):
    """This reader does not take the body; betterproto decodes it instead."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise Malformed
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of a message, in order, as (field number, bytes)."""
    fields = []
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        if tag & 7 != _LENGTH_DELIMITED:
            raise Malformed
        length, at = _varint(data, at)
        end = at + length
        if end > len(data):
            raise Malformed
        fields.append((tag >> 3, data[at:end]))
        at = end
    return fields


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise Malformed from None


def _label(entry: bytes) -> tuple[str, str]:
    """One entry of a map<string, string>: key is field 1, value field 2."""
    key = value = ""
    for number, field in _fields(entry):
        if number == 1:
            key = _text(field)
        elif number == 2:
            value = _text(field)
    return key, value


class Request:
    """A request of one of the hot calls; ``decode`` reads it from the wire."""

    __slots__ = ()
    # The string fields, by number from 1 on, and the label map's number (0: none).
    STRINGS: ClassVar[tuple[str, ...]]
    LABELS: ClassVar[int] = 0
    MESSAGE: ClassVar[type[Message]]  # what betterproto decodes the same body into

    @classmethod
    def decode(cls, data: bytes) -> Any:
        try:
            fields = cls._read(data)
        except Malformed:
            fields = None
        if fields is None:  # outside the except: betterproto's error is raised on its own
            message = cls.MESSAGE().parse(data)
            fields = {name: getattr(message, name) for name in cls._names()}
        request = cls()
        for name, value in fields.items():
            setattr(request, name, value)
        return request

    @classmethod
    def _read(cls, data: bytes) -> dict[str, Any]:
        fields: dict[str, Any] = dict.fromkeys(cls.STRINGS, "")
        labels: dict[str, str] = {}
        for number, value in _fields(data):
            if 0 < number <= len(cls.STRINGS):
                fields[cls.STRINGS[number - 1]] = _text(value)
            elif number == cls.LABELS:
                key, label = _label(value)
                labels[key] = label
            else:
                raise Malformed  # a field this reader does not know: betterproto's call
        if cls.LABELS:
            fields["labels"] = labels
        return fields

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return (*cls.STRINGS, "labels") if cls.LABELS else cls.STRINGS


class KeyRequest(Request):
    """Stat, Mounts, Remove, Usage: a snapshot key."""

    __slots__ = ("key", "snapshotter")
    STRINGS = ("snapshotter", "key")
    snapshotter: str
    key: str


class StatRequest(KeyRequest):
    __slots__ = ()
    MESSAGE = api.StatSnapshotRequest


class MountsRequest(KeyRequest):
    __slots__ = ()
    MESSAGE = api.MountsRequest


class RemoveRequest(KeyRequest):
    __slots__ = ()
    MESSAGE = api.RemoveSnapshotRequest


class UsageRequest(KeyRequest):
    __slots__ = ()
    MESSAGE = api.UsageRequest


class CreateRequest(Request):
    """Prepare and View: a key, a parent, labels."""

    __slots__ = ("key", "labels", "parent", "snapshotter")
    STRINGS = ("snapshotter", "key", "parent")
    LABELS = 4
    snapshotter: str
    key: str
    parent: str
    labels: dict[str, str]


class PrepareRequest(CreateRequest):
    __slots__ = ()
    MESSAGE = api.PrepareSnapshotRequest


class ViewRequest(CreateRequest):
    __slots__ = ()
    MESSAGE = api.ViewSnapshotRequest


class CommitRequest(Request):
    __slots__ = ("key", "labels", "name", "snapshotter")
    STRINGS = ("snapshotter", "name", "key")
    LABELS = 4
    MESSAGE = api.CommitSnapshotRequest
    snapshotter: str
    name: str
    key: str
    labels: dict[str, str]
