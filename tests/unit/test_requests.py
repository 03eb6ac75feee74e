"""Tests of obdsnap.requests: the hot calls' requests decode as betterproto decodes them."""

from __future__ import annotations

import pytest
from betterproto import Message

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.requests import (
    CommitRequest,
    MountsRequest,
    PrepareRequest,
    RemoveRequest,
    Request,
    StatRequest,
    UsageRequest,
    ViewRequest,
)
from obdsnap.wire import SnapshotsCodec

LABELS = {"containerd.io/gc.root": "2024", "ünï": "cødé ✓", "empty": ""}

REQUESTS: list[tuple[type[Request], Message]] = [
    (StatRequest, api.StatSnapshotRequest(snapshotter="obdsnap", key="sha256:abc")),
    (MountsRequest, api.MountsRequest(key="k")),
    (RemoveRequest, api.RemoveSnapshotRequest(snapshotter="s", key="k" * 300)),
    (UsageRequest, api.UsageRequest()),
    (PrepareRequest, api.PrepareSnapshotRequest(key="k", parent="p", labels=LABELS)),
    (PrepareRequest, api.PrepareSnapshotRequest(key="k")),
    (ViewRequest, api.ViewSnapshotRequest(snapshotter="s", key="v", parent="p", labels={"a": ""})),
    (CommitRequest, api.CommitSnapshotRequest(name="n", key="k", labels=LABELS)),
]


def fields_of(request: object, names: tuple[str, ...]) -> dict[str, object]:
    return {name: getattr(request, name) for name in names}


def names(kind: type[Request]) -> tuple[str, ...]:
    return (*kind.STRINGS, "labels") if kind.LABELS else kind.STRINGS


@pytest.mark.parametrize(("kind", "message"), REQUESTS)
def test_requests_decode_to_betterprotos_fields(kind: type[Request], message: Message) -> None:
    data = bytes(message)
    decoded = SnapshotsCodec().decode(data, kind)
    assert isinstance(decoded, kind)
    assert fields_of(decoded, names(kind)) == fields_of(message, names(kind))


def test_an_unknown_field_is_read_by_betterproto() -> None:
    data = bytes(api.StatSnapshotRequest(key="k")) + b"\x18\x05"  # field 3, a varint
    assert StatRequest.decode(data).key == "k"


def test_a_repeated_field_keeps_its_last_value_and_map_keys_their_last() -> None:
    first = bytes(api.PrepareSnapshotRequest(key="a", labels={"x": "1"}))
    second = bytes(api.PrepareSnapshotRequest(key="b", labels={"x": "2", "y": "3"}))
    decoded = PrepareRequest.decode(first + second)
    assert decoded.key == "b"
    assert decoded.labels == {"x": "2", "y": "3"}


@pytest.mark.parametrize(
    "data",
    [
        b"\x12\x05abc",  # truncated string
        b"\x12\xff",  # truncated length
        b"\x12\x02\xff\xfe",  # not UTF-8
        b"\x12" + b"\xff" * 11,  # a varint too long
    ],
)
def test_malformed_bodies_fail_as_in_betterproto(data: bytes) -> None:
    with pytest.raises(Exception) as expected:
        api.StatSnapshotRequest().parse(data)
    with pytest.raises(expected.type):
        StatRequest.decode(data)
