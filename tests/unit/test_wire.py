"""Tests of obdsnap.wire: cached Info bytes decode like freshly built betterproto messages."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

import betterproto
import pytest
from betterproto.lib.google.protobuf import Timestamp

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.genproto.containerd.types import Mount as MountMessage
from obdsnap.mounts import Mount
from obdsnap.storage import Info, Kind
from obdsnap.storage.model import unix_nanos
from obdsnap.wire import Encoded, InfoEncoder, SnapshotsCodec, info_message, mounts_reply

CREATED = datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
UPDATED = datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC)


def make_info(
    name: str = "sha256:abc",
    *,
    parent: str = "sha256:parent",
    kind: Kind = Kind.COMMITTED,
    labels: dict[str, str] | None = None,
) -> Info:
    return Info(
        name,
        parent,
        kind,
        {"containerd.io/gc.root": "2024", "ünï": "cødé ✓"} if labels is None else labels,
        unix_nanos(CREATED),
        unix_nanos(UPDATED),
    )


def assert_same_info(decoded: api.Info, info: Info) -> None:
    assert decoded.name == info.name
    assert decoded.parent == info.parent
    assert int(decoded.kind) == int(info.kind)
    assert dict(decoded.labels) == dict(info.labels)
    assert decoded.created_at == info.created_at
    assert decoded.updated_at == info.updated_at
    assert decoded == info_message(info)


@pytest.mark.parametrize("kind", [Kind.VIEW, Kind.ACTIVE, Kind.COMMITTED])
def test_stat_reply_decodes_to_the_info(kind: Kind) -> None:
    info = make_info(kind=kind)
    data = InfoEncoder().reply([info]).data
    decoded = api.StatSnapshotResponse().parse(data)
    assert_same_info(decoded.info, info)
    assert data == bytes(api.StatSnapshotResponse(info=info_message(info)))


def test_update_reply_decodes_to_the_info() -> None:
    info = make_info(parent="", labels={})
    decoded = api.UpdateSnapshotResponse().parse(InfoEncoder().reply([info]).data)
    assert_same_info(decoded.info, info)


def test_info_message_fields() -> None:
    info = make_info()
    message = info_message(info)
    assert message.name == info.name
    assert message.parent == info.parent
    assert message.kind == api.Kind.COMMITTED
    assert message.labels == dict(info.labels)
    assert message.created_at == CREATED
    assert message.updated_at == UPDATED


@pytest.mark.parametrize("size", [1, 127, 128, 300, 16383, 16384, 20000, 3_000_000])
def test_long_infos_have_correct_length_prefix(size: int) -> None:
    info = make_info(labels={"big": "x" * size})
    decoded = api.StatSnapshotResponse().parse(InfoEncoder().field(info))
    assert_same_info(decoded.info, info)


def test_list_reply_decodes_every_info_in_order() -> None:
    infos = [
        make_info("base", parent="", labels={}),
        make_info("layer", parent="base", labels={"a": "1"}),
        make_info("work", parent="layer", kind=Kind.ACTIVE, labels={"b": "2" * 200}),
        make_info("view", parent="layer", kind=Kind.VIEW),
    ]
    encoder = InfoEncoder()
    reply = encoder.reply(infos)
    assert isinstance(reply, Encoded)
    decoded = api.ListSnapshotsResponse().parse(reply.data)
    assert len(decoded.info) == len(infos)
    for message, info in zip(decoded.info, infos, strict=True):
        assert_same_info(message, info)
    expected = api.ListSnapshotsResponse(info=[info_message(i) for i in infos])
    assert reply.data == bytes(expected)


def test_empty_reply() -> None:
    reply = InfoEncoder().reply([])
    assert reply.data == b""
    assert api.ListSnapshotsResponse().parse(reply.data).info == []


def test_cache_returns_the_same_bytes_for_the_same_info() -> None:
    encoder = InfoEncoder()
    info = make_info()
    first = encoder.field(info)
    assert encoder.field(info) is first
    assert encoder.reply([info]).data == first


def test_cache_reencodes_after_the_info_changes() -> None:
    encoder = InfoEncoder()
    info = make_info(labels={"a": "1"})
    first = encoder.field(info)
    changed = replace(
        info, labels={"a": "2"}, updated_ns=unix_nanos(datetime(2025, 5, 5, tzinfo=UTC))
    )
    second = encoder.field(changed)
    assert second is not first
    assert second != first
    assert_same_info(api.StatSnapshotResponse().parse(second).info, changed)
    # The new record is cached in turn.
    assert encoder.field(changed) is second


def test_cache_keys_by_name() -> None:
    encoder = InfoEncoder()
    a = make_info("a")
    b = make_info("b")
    data_a = encoder.field(a)
    data_b = encoder.field(b)
    assert data_a != data_b
    assert encoder.field(a) is data_a
    assert encoder.field(b) is data_b


def test_forget_drops_the_cached_bytes() -> None:
    encoder = InfoEncoder()
    info = make_info()
    first = encoder.field(info)
    encoder.forget(info.name)
    again = encoder.field(info)
    assert again is not first
    assert again == first
    encoder.forget("never-cached")


def test_reply_codec_passes_encoded_through() -> None:
    codec = SnapshotsCodec()
    payload = Encoded(b"\x0a\x00")
    assert codec.encode(payload, api.StatSnapshotResponse) is payload.data


def test_reply_codec_encodes_normal_messages() -> None:
    codec = SnapshotsCodec()
    message = api.UsageResponse(size=4096, inodes=3)
    data = codec.encode(message, api.UsageResponse)
    assert data == bytes(message)
    assert api.UsageResponse().parse(data) == message
    assert codec.decode(data, api.UsageResponse) == message
    with pytest.raises(TypeError):
        codec.encode(message, api.StatSnapshotResponse)


@dataclass(eq=False, repr=False)
class _NanoInfo(betterproto.Message):
    """Info with its timestamps as Timestamp messages, which keep the nanoseconds."""

    name: str = betterproto.string_field(1)
    created_at: Timestamp = betterproto.message_field(4)  # noqa: RUF009 - betterproto's fields
    updated_at: Timestamp = betterproto.message_field(5)  # noqa: RUF009 - betterproto's fields


@dataclass(eq=False, repr=False)
class _NanoReply(betterproto.Message):
    info: _NanoInfo = betterproto.message_field(1)  # noqa: RUF009 - betterproto's fields


@pytest.mark.parametrize(
    "created_ns",
    [1_700_000_000_123_456_789, 999_999_999, 5 * 1_000_000_000, 0, -1_500_000_001],
)
def test_timestamps_keep_nanoseconds(created_ns: int) -> None:
    info = replace(make_info(), created_ns=created_ns, updated_ns=created_ns + 1)
    field = InfoEncoder().field(info)
    decoded = api.StatSnapshotResponse().parse(field).info
    assert decoded.labels == info.labels
    assert decoded.created_at == info.created_at
    nano = _NanoReply().parse(field).info
    created = nano.created_at.seconds * 1_000_000_000 + nano.created_at.nanos
    updated = nano.updated_at.seconds * 1_000_000_000 + nano.updated_at.nanos
    assert (created, updated) == (created_ns, created_ns + 1)


@pytest.mark.parametrize(
    "mounts",
    [
        [],
        [Mount("bind", "/a/b", ("ro", "rbind"))],
        [
            Mount("overlay", "overlay", ("workdir=/w", "upperdir=/u", "lowerdir=/1:/2"), "/t"),
            Mount("bind", "", ("",)),
            Mount("", "/ünï"),
        ],
    ],
)
def test_mounts_reply_encodes_as_betterproto_does(mounts: list[Mount]) -> None:
    messages = [
        MountMessage(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]
    data = mounts_reply(mounts).data
    assert data == bytes(api.MountsResponse(mounts=messages))
    assert api.PrepareSnapshotResponse().parse(data).mounts == messages


def test_reply_codec_decodes_other_requests_with_betterproto() -> None:
    message = api.UpdateSnapshotRequest(info=api.Info(name="n", labels={"a": "b"}))
    assert SnapshotsCodec().decode(bytes(message), api.UpdateSnapshotRequest) == message
