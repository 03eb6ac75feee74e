"""Model-based fuzzing: random Snapshots calls against one live server, checked against a model.

The model is containerd's metadata semantics (DESIGN §1): one key namespace, kinds,
parents that must exist and be committed, the check order of Commit, no removal of a
snapshot with children, empty label values never stored, the 4096-byte label limit and
the Update field paths. Every reply's status code (and content, where there is one) must
be what the model says.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import betterproto.lib.google.protobuf as pb
import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from support.server_process import ServerProcess

from obdsnap.genproto.containerd.services.snapshots import v1 as api

from .conftest import count

T = TypeVar("T")

ACTIVE, VIEW, COMMITTED = "active", "view", "committed"
KINDS = {api.Kind.ACTIVE: ACTIVE, api.Kind.VIEW: VIEW, api.Kind.COMMITTED: COMMITTED}
MAX_BYTES = 4096

SIMPLE_KEYS = ["a", "b", "c", "d"]
EXOTIC_KEYS = [
    "",
    "\x00",
    "a\x00b",
    "k" * MAX_BYTES,
    "k" * (MAX_BYTES + 1),
    "é" * (MAX_BYTES // 2),
    "é" * (MAX_BYTES // 2 + 1),
    "ünï©ødé/ключ/键",
    "a/b/c",
    "/",
    "..",
    "extract-1 sha256:abc",
    "default/12/extract-3 sha256:def",
    "extract-",
    " ",
    "\n",
    "😀",
]
KEYS = st.one_of(
    st.sampled_from(SIMPLE_KEYS),
    st.sampled_from(SIMPLE_KEYS),
    st.sampled_from(SIMPLE_KEYS),
    st.sampled_from(EXOTIC_KEYS),
    st.text(max_size=12),
)
LABEL_KEYS = st.one_of(
    st.sampled_from(["a", "b", "x.y", "containerd.io/gc.root", "", "ü/ß", "k" * 4000]),
    st.text(max_size=8),
)
LABEL_VALUES = st.one_of(
    st.sampled_from(["", "v", "w", "v" * 95, "v" * 4090, "é" * 2100]),
    st.text(max_size=8),
)
LABELS = st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=3)
PATHS = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "labels",
                "labels.a",
                "labels.b",
                "labels.x.y",
                "labels.",
                "labels.containerd.io/gc.root",
                "labels.ü/ß",
                "name",
                "parent",
                "kind",
                "",
                "Labels",
                "labels*",
            ]
        ),
        st.text(max_size=6),
    ),
    max_size=3,
)

# Filters this module can evaluate itself: (filter text, predicate on a Snap).
FilterAtom = tuple[str, Callable[["Snap"], bool]]


def _atoms() -> list[FilterAtom]:
    atoms: list[FilterAtom] = []
    for kind in (ACTIVE, VIEW, COMMITTED):
        atoms.append((f"kind=={kind}", lambda s, k=kind: s.kind == k))  # type: ignore[misc]
        atoms.append((f"kind!={kind}", lambda s, k=kind: s.kind != k))  # type: ignore[misc]
    for key in SIMPLE_KEYS:
        atoms.append((f"name=={key}", lambda s, k=key: s.name == k))  # type: ignore[misc]
        atoms.append((f"parent=={key}", lambda s, k=key: s.parent == k))  # type: ignore[misc]
    atoms += [
        ("labels.a", lambda s: "a" in s.labels),
        ("labels.a==v", lambda s: s.labels.get("a") == "v"),
        ("labels.b!=w", lambda s: s.labels.get("b", "") != "w"),
        ('labels."containerd.io/gc.root"', lambda s: "containerd.io/gc.root" in s.labels),
        ('labels."x.y"==v', lambda s: s.labels.get("x.y") == "v"),
        ("name~=^a", lambda s: re.search("^a", s.name) is not None),
        ("name~=c$", lambda s: re.search("c$", s.name) is not None),
        ("name~=(", lambda s: False),
    ]
    return atoms


ATOMS = _atoms()
VALID_FILTERS = st.lists(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=3), max_size=3)
GARBAGE_FILTERS = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "",
                ",",
                "name==",
                "labels.",
                "==a",
                "kind==active,",
                '"',
                'labels."x',
                "name~=/a/",
                "name~=|b|",
                "a b",
                "name===a",
                "labels.a.b.c",
                "kind~=",
                "!",
            ]
        ),
        st.text(max_size=16),
    ),
    min_size=1,
    max_size=3,
)


@dataclass
class Snap:
    name: str
    parent: str
    kind: str
    labels: dict[str, str] = field(default_factory=dict)


def key_ok(key: str) -> bool:
    return bool(key) and "\x00" not in key and len(key.encode()) <= MAX_BYTES


def labels_ok(labels: dict[str, str]) -> bool:
    return all(k and len(k.encode()) + len(v.encode()) <= MAX_BYTES for k, v in labels.items())


def stored(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if v}


def path_ok(path: str) -> bool:
    return path == "labels" or path.startswith("labels.")


def as_snap(info: api.Info) -> Snap:
    return Snap(info.name, info.parent, KINDS.get(info.kind, str(info.kind)), dict(info.labels))


class SnapshotsMachine(RuleBasedStateMachine):
    """Random calls; ``model`` is what the server must hold after each acknowledged one."""

    server: ClassVar[ServerProcess]

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, Snap] = {}
        count("model examples")
        self.loop = asyncio.new_event_loop()
        self.channel = self.loop.run_until_complete(self._open())
        self.client = api.SnapshotsStub(self.channel, timeout=30)

    async def _open(self) -> Channel:
        return Channel(path=str(self.server.address))

    # ------------------------------------------------------------------ plumbing

    def call(self, what: str, coro: Awaitable[T]) -> tuple[Status, T | None]:
        count("model steps")

        async def outcome() -> tuple[Status, T | None]:
            try:
                return Status.OK, await coro
            except GRPCError as exc:
                assert exc.status != Status.UNKNOWN, f"{what}: UNKNOWN: {exc.message}"
                return exc.status, None

        return self.loop.run_until_complete(outcome())

    def expect(self, what: str, got: Status, want: Status) -> None:
        count(f"model replies {got.name}")
        assert got == want, f"{what}: expected {want.name}, got {got.name}; model {self.model!r}"[
            :3000
        ]

    def some_key(self, data: st.DataObject) -> str:
        if self.model:
            return data.draw(st.one_of(st.sampled_from(sorted(self.model)), KEYS))
        return data.draw(KEYS)

    def has_children(self, key: str) -> bool:
        return any(snap.parent == key for snap in self.model.values())

    def list_all(self, filters: Sequence[str] = ()) -> tuple[Status, list[Snap]]:
        async def collect() -> list[Snap]:
            request = api.ListSnapshotsRequest(filters=list(filters))
            return [
                as_snap(info) async for reply in self.client.list(request) for info in reply.info
            ]

        status, snaps = self.call(f"List {filters!r}", collect())
        return status, snaps or []

    # ------------------------------------------------------------------ rules

    @rule(data=st.data(), view=st.booleans(), labels=LABELS)
    def create(self, data: st.DataObject, view: bool, labels: dict[str, str]) -> None:
        key = self.some_key(data)
        parent = data.draw(st.one_of(st.just(""), st.just(""), st.sampled_from(SIMPLE_KEYS)))
        existing_parent = data.draw(st.booleans())
        if self.model and existing_parent:
            parent = data.draw(st.sampled_from(sorted(self.model)))
        kind = VIEW if view else ACTIVE
        if not key_ok(key) or not labels_ok(labels):
            want = Status.INVALID_ARGUMENT
        elif parent and parent not in self.model:
            want = Status.NOT_FOUND
        elif parent and self.model[parent].kind != COMMITTED:
            want = Status.INVALID_ARGUMENT
        elif key in self.model:
            want = Status.ALREADY_EXISTS
        else:
            want = Status.OK
        if view:
            call: Awaitable[Any] = self.client.view(
                api.ViewSnapshotRequest(key=key, parent=parent, labels=labels)
            )
        else:
            call = self.client.prepare(
                api.PrepareSnapshotRequest(key=key, parent=parent, labels=labels)
            )
        what = f"{kind} {key[:40]!r} on {parent[:40]!r} {labels!r:.200}"
        status, reply = self.call(what, call)
        self.expect(what, status, want)
        if status == Status.OK:
            assert reply is not None and len(reply.mounts) == 1, (what, reply)
            self.model[key] = Snap(key, parent, kind, stored(labels))

    @rule(data=st.data(), labels=LABELS)
    def commit(self, data: st.DataObject, labels: dict[str, str]) -> None:
        key = self.some_key(data)
        name = self.some_key(data)
        if not key_ok(name) or not key_ok(key) or not labels_ok(labels):
            want = Status.INVALID_ARGUMENT
        elif key not in self.model:
            want = Status.NOT_FOUND
        elif name in self.model:
            want = Status.ALREADY_EXISTS
        elif self.model[key].kind != ACTIVE:
            want = Status.FAILED_PRECONDITION
        else:
            want = Status.OK
        what = f"Commit {name[:40]!r} from {key[:40]!r}"
        request = api.CommitSnapshotRequest(name=name, key=key, labels=labels)
        status, _ = self.call(what, self.client.commit(request))
        self.expect(what, status, want)
        if status == Status.OK:
            active = self.model.pop(key)
            self.model[name] = Snap(name, active.parent, COMMITTED, stored(labels))

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        key = self.some_key(data)
        if not key_ok(key):
            want = Status.INVALID_ARGUMENT
        elif key not in self.model:
            want = Status.NOT_FOUND
        elif self.has_children(key):
            want = Status.FAILED_PRECONDITION
        else:
            want = Status.OK
        what = f"Remove {key[:40]!r}"
        status, _ = self.call(what, self.client.remove(api.RemoveSnapshotRequest(key=key)))
        self.expect(what, status, want)
        if status == Status.OK:
            del self.model[key]

    @rule(data=st.data())
    def stat(self, data: st.DataObject) -> None:
        key = self.some_key(data)
        want = self.lookup_status(key)
        what = f"Stat {key[:40]!r}"
        status, reply = self.call(what, self.client.stat(api.StatSnapshotRequest(key=key)))
        self.expect(what, status, want)
        if status == Status.OK:
            assert reply is not None
            assert as_snap(reply.info) == self.model[key], what

    def lookup_status(self, key: str) -> Status:
        if not key_ok(key):
            return Status.INVALID_ARGUMENT
        return Status.OK if key in self.model else Status.NOT_FOUND

    @rule(data=st.data(), labels=LABELS, paths=st.one_of(st.none(), PATHS))
    def update(self, data: st.DataObject, labels: dict[str, str], paths: list[str] | None) -> None:
        key = self.some_key(data)
        if not key_ok(key) or not labels_ok(labels):
            want = Status.INVALID_ARGUMENT
        elif key not in self.model:
            want = Status.NOT_FOUND
        elif not all(path_ok(p) for p in paths or []):
            want = Status.INVALID_ARGUMENT
        else:
            want = Status.OK
        request = api.UpdateSnapshotRequest(info=api.Info(name=key, labels=labels))
        if paths is not None:
            request.update_mask = pb.FieldMask(paths=paths)
        what = f"Update {key[:40]!r} {labels!r:.200} {paths!r}"
        status, reply = self.call(what, self.client.update(request))
        self.expect(what, status, want)
        if status != Status.OK:
            return
        snap = self.model[key]
        updated = dict(snap.labels)
        if not paths:
            updated = dict(labels)
        for path in paths or []:
            if path == "labels":
                updated = dict(labels)
            else:
                label = path[len("labels.") :]
                if label in labels:
                    updated[label] = labels[label]
                else:
                    updated.pop(label, None)
        snap.labels = stored(updated)
        assert reply is not None
        assert as_snap(reply.info) == snap, what

    @rule(data=st.data())
    def mounts(self, data: st.DataObject) -> None:
        key = self.some_key(data)
        want = self.lookup_status(key)
        if want == Status.OK and self.model[key].kind == COMMITTED:
            want = Status.FAILED_PRECONDITION
        what = f"Mounts {key[:40]!r}"
        status, reply = self.call(what, self.client.mounts(api.MountsRequest(key=key)))
        self.expect(what, status, want)
        if status == Status.OK:
            assert reply is not None and len(reply.mounts) == 1, (what, reply)

    @rule(data=st.data())
    def usage(self, data: st.DataObject) -> None:
        key = self.some_key(data)
        want = self.lookup_status(key)
        what = f"Usage {key[:40]!r}"
        status, reply = self.call(what, self.client.usage(api.UsageRequest(key=key)))
        self.expect(what, status, want)
        if status == Status.OK:
            assert reply is not None and reply.size >= 0 and reply.inodes >= 0, (what, reply)
            if self.model[key].kind == VIEW:
                assert (reply.size, reply.inodes) == (0, 0), (what, reply)

    @rule()
    def cleanup(self) -> None:
        status, _ = self.call("Cleanup", self.client.cleanup(api.CleanupRequest()))
        self.expect("Cleanup", status, Status.OK)

    @rule()
    def list_everything(self) -> None:
        status, snaps = self.list_all()
        self.expect("List", status, Status.OK)
        names = [s.name for s in snaps]
        assert len(names) == len(set(names)), f"List answered a name twice: {names}"
        assert {s.name: s for s in snaps} == self.model

    @rule(chosen=VALID_FILTERS)
    def list_filtered(self, chosen: list[list[FilterAtom]]) -> None:
        filters = [",".join(text for text, _ in atoms) for atoms in chosen]
        status, snaps = self.list_all(filters)
        self.expect(f"List {filters!r}", status, Status.OK)
        want = {
            name
            for name, snap in self.model.items()
            if not chosen or any(all(match(snap) for _, match in atoms) for atoms in chosen)
        }
        assert {s.name for s in snaps} == want, f"List {filters!r}"

    @rule(filters=GARBAGE_FILTERS)
    def list_garbage(self, filters: list[str]) -> None:
        status, snaps = self.list_all(filters)
        assert status in (Status.OK, Status.INVALID_ARGUMENT), (filters, status)
        assert {s.name for s in snaps} <= set(self.model), filters

    def teardown(self) -> None:
        """Remove everything, children first, so the next example starts from an empty store."""
        try:
            while self.model:
                leaves = [k for k in self.model if not self.has_children(k)]
                for key in leaves:
                    req = api.RemoveSnapshotRequest(key=key)
                    status, _ = self.call(f"Remove {key!r}", self.client.remove(req))
                    self.expect(f"teardown Remove {key[:40]!r}", status, Status.OK)
                    del self.model[key]
            status, snaps = self.list_all()
            assert status == Status.OK and snaps == [], snaps
        finally:
            self.channel.close()
            self.loop.close()


def test_snapshots_against_model(fuzz_server: ServerProcess) -> None:
    SnapshotsMachine.server = fuzz_server
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        SnapshotsMachine,
        settings=settings(
            max_examples=200,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            # Shrinking against a live server takes minutes: report the failing run as found.
            phases=[Phase.explicit, Phase.generate],
        ),
    )
    assert fuzz_server.running(), fuzz_server.log()


@pytest.mark.parametrize("key", ["x", "extract-9 sha256:1"])
def test_server_still_answers_after_fuzzing(fuzz_server: ServerProcess, key: str) -> None:
    """The fuzzing left the server consistent: a fresh create/stat/remove round trip works."""
    machine = SnapshotsMachine()
    try:
        status, _ = machine.call(
            "Prepare", machine.client.prepare(api.PrepareSnapshotRequest(key=key))
        )
        assert status == Status.OK
        status, reply = machine.call("Stat", machine.client.stat(api.StatSnapshotRequest(key=key)))
        assert status == Status.OK and reply is not None and reply.info.name == key
        machine.model[key] = Snap(key, "", ACTIVE)
    finally:
        machine.teardown()
