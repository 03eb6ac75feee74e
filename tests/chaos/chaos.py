"""The chaos run: a concurrent Prepare/Commit/Mounts/Remove load on obdsnap, SIGKILLed at random.

Every client keeps an in-memory ledger of what obdsnap acknowledged. An RPC that
failed or was cut by a kill is *pending*: its outcome is unknown, and the next
check accepts it fully done or fully undone, never half made. After each restart
(with no load running) the ledger is checked against what obdsnap shows; at the
end Cleanup runs and nothing may be left that no snapshot owns. Violations are
collected by category, so each invariant is a test of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from grpclib.client import Channel
from support.server_process import ServerProcess, short_tmpdir
from support.simulator import force_clean, settings_on

from obdsnap.genproto.containerd.services.snapshots import v1 as api
from obdsnap.genproto.containerd.types import Mount
from obdsnap.mountinfo import mounts_under
from tcmusim.testing import HBA, RunningSimulator

from .turbo import TURBO, conversion_problem, layer_tar_of, unpack_labels, write_layer

OVERLAY = "overlayfs"
DIR = "dir"
DIR_SEAL = "dir-seal"
ASYNC_REMOVE = "asyncRemove"
# The boot config keys of each variant.
VARIANT_CONFIG: dict[str, dict[str, object]] = {
    DIR: {"rwMode": "dir"},
    DIR_SEAL: {"rwMode": "dir", "writableCommit": "seal"},
    ASYNC_REMOVE: {"rwMode": "overlayfs", "asyncRemove": True},
    TURBO: {"rwMode": "overlayfs"},
}

ACTIVE = api.Kind(2)  # api.Kind.ACTIVE, typed as the enum
COMMITTED = api.Kind(3)  # api.Kind.COMMITTED
CLIENTS = 16
CALL_TIMEOUT = 20.0
# Every PROGRESS_EVERY-th round waits (up to CALL_TIMEOUT) for a Commit acknowledged in it
# before the random delay starts: on a slow machine a short delay alone can cut every
# Commit of the run, and the run then proves nothing about acknowledged commits.
PROGRESS_EVERY = 4
MAX_ACTIVE_PER_CLIENT = 3
MAX_DEPTH = 4

# Invariant categories; each is one test.
ACKED_PRESENT = "acked_present"
REMOVED_GONE = "removed_gone"
ALL_OR_NOTHING = "all_or_nothing"
COMMIT_RETRY = "commit_retry"
ORPHANS = "orphans_after_cleanup"
DEVICE_ORPHANS = "device_orphans_after_cleanup"
TEARDOWN = "teardown_leftovers"
INTENTS_SETTLED = "intents_settled_at_start_up"
CATEGORIES = (
    INTENTS_SETTLED,
    ACKED_PRESENT,
    REMOVED_GONE,
    ALL_OR_NOTHING,
    COMMIT_RETRY,
    ORPHANS,
    DEVICE_ORPHANS,
    TEARDOWN,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    variant: str
    seed: int
    kills: int
    min_delay: float  # seconds of load between a restart and the next SIGKILL
    max_delay: float
    cleanup_interval: float = 0.0  # seconds between Cleanups during the load; 0: none
    clients: int = CLIENTS


@dataclass
class Snap:
    """A snapshot obdsnap acknowledged (or a pending one a check found whole)."""

    kind: api.Kind
    parent: str
    owner: int  # the client that works on it
    depth: int
    data: str | None = None  # a file written and fsynced into its writable dir


@dataclass
class Pending:
    """An RPC whose outcome is unknown: it failed or a kill cut it."""

    op: str  # prepare | commit | remove
    key: str
    parent: str
    depth: int
    kind: api.Kind = ACTIVE
    name: str = ""  # commit: the committed name


@dataclass
class Ledger:
    live: dict[str, Snap] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)  # acknowledged (or found) gone, for good
    pending: list[Pending] = field(default_factory=list)
    used_as_parent: set[str] = field(default_factory=set)  # never removed by the clients
    broken: set[str] = field(default_factory=set)  # reported once, not checked again
    touched: set[str] = field(default_factory=set)  # every name a create op ever used
    acked: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # why calls failed, by message


@dataclass
class Report:
    settings: Settings
    kills: int = 0
    rounds_checked: int = 0
    acked: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    acked_live_expected: int = 0
    acked_live_found: int = 0
    pending_resolved_present: int = 0
    pending_resolved_absent: int = 0
    orphans_after_cleanup: int = -1
    # Operations a kill cut short, as their open intents in the metadata, by operation.
    interrupted: Counter[str] = field(default_factory=Counter)
    runtime: float = 0.0
    violations: dict[str, list[str]] = field(default_factory=dict)

    def add(self, category: str, message: str) -> None:
        self.violations.setdefault(category, []).append(message)

    def summary(self) -> str:
        s = self.settings
        counts = {c: len(self.violations.get(c, [])) for c in CATEGORIES}
        return (
            f"chaos[{s.variant}] seed={s.seed} (replay: CHAOS_SEED={s.seed}) "
            f"runtime={self.runtime:.1f}s kills survived={self.kills} "
            f"checks={self.rounds_checked} acked={dict(self.acked)} "
            f"unknown={dict(self.unknown)} acked-live expected/found at end="
            f"{self.acked_live_expected}/{self.acked_live_found} "
            f"pending found present/absent={self.pending_resolved_present}/"
            f"{self.pending_resolved_absent} orphans after Cleanup={self.orphans_after_cleanup} "
            f"interrupted operations settled at start-up={dict(self.interrupted)} "
            f"violations={counts} errors under load (not killed yet): "
            f"{self.errors.most_common(4)}"
        )


# ---------------------------------------------------------------------- helpers


async def call(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, CALL_TIMEOUT)


def writable_dir(mounts: list[Mount]) -> Path:
    """Where a container's writes land: the overlay's upperdir, or the bind's source."""
    mount = mounts[0]
    if mount.type == "overlay":
        for option in mount.options:
            if option.startswith("upperdir="):
                return Path(option.split("=", 1)[1])
    return Path(mount.source)


def write_synced(directory: Path, name: str) -> None:
    path = directory / name
    with path.open("w") as file:
        file.write(name)
        file.flush()
        os.fsync(file.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def snapshot_ids(root: Path) -> dict[str, int]:
    """key -> ID, from the metadata database (read-only)."""
    database = root / "metadata.db"
    if not database.exists():
        return {}
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return {str(key): int(i) for key, i in connection.execute("SELECT key, id FROM snapshots")}
    finally:
        connection.close()


def open_intents(root: Path) -> list[str]:
    """The intents in the metadata database, as "operation of ID" (read-only)."""
    database = root / "metadata.db"
    if not database.exists():
        return []
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        rows = connection.execute("SELECT operation, snapshot_id FROM intents").fetchall()
    except sqlite3.OperationalError:  # killed before the first start-up made the table
        return []
    finally:
        connection.close()
    return [f"{operation} of {snapshot_id}" for operation, snapshot_id in rows]


def id_of_path(path: str, snapshots: Path) -> int | None:
    try:
        first = Path(path).relative_to(snapshots).parts[0]
    except (ValueError, IndexError):
        return None
    return int(first) if first.isdigit() else None


async def list_infos(stub: api.SnapshotsStub) -> dict[str, api.Info]:
    found: dict[str, api.Info] = {}
    async for reply in stub.list(api.ListSnapshotsRequest(), timeout=CALL_TIMEOUT):
        for info in reply.info:
            found[info.name] = info
    return found


# ---------------------------------------------------------------------- the load


class Client:
    def __init__(
        self,
        index: int,
        rng: random.Random,
        ledger: Ledger,
        round_no: int,
        stop: asyncio.Event,
        *,
        turbo: bool = False,
    ) -> None:
        self.turbo = turbo  # unpacks whose layer.tar each Commit converts (DESIGN-v1 §13)
        self.index = index
        self.rng = rng
        self.ledger = ledger
        self.round_no = round_no
        self.stop = stop
        self.counter = 0

    async def run(self, stub: api.SnapshotsStub) -> None:
        while not self.stop.is_set():
            try:
                await self.step(stub)
            except Exception as exc:
                if not self.stop.is_set():
                    self.ledger.errors[f"{type(exc).__name__}: {str(exc)[:160]}"] += 1
                await asyncio.sleep(0.01)  # unknown outcome; pending stays in the ledger

    async def step(self, stub: api.SnapshotsStub) -> None:
        ledger = self.ledger
        mine = [
            k for k, s in ledger.live.items() if s.owner == self.index and k not in ledger.broken
        ]
        actives = [k for k in mine if ledger.live[k].kind == ACTIVE]
        removable = [
            k for k in mine if ledger.live[k].kind == ACTIVE or k not in ledger.used_as_parent
        ]
        roll = self.rng.random()
        if not actives or (roll < 0.35 and len(actives) < MAX_ACTIVE_PER_CLIENT):
            await self.prepare(stub)
        elif roll < 0.65:
            await self.commit(stub, self.rng.choice(sorted(actives)))
        elif roll < 0.75:
            await call(stub.mounts(api.MountsRequest(key=self.rng.choice(sorted(actives)))))
            ledger.acked["mounts"] += 1
        else:
            await self.remove(stub, self.rng.choice(sorted(removable)))

    async def prepare(self, stub: api.SnapshotsStub) -> None:
        ledger = self.ledger
        self.counter += 1
        key = f"c{self.index}-r{self.round_no}-{self.counter}"
        parents = sorted(
            k for k, s in ledger.live.items() if s.kind == COMMITTED and s.depth < MAX_DEPTH
        )
        parent = self.rng.choice(parents) if parents and self.rng.random() < 0.6 else ""
        depth = ledger.live[parent].depth + 1 if parent else 1
        pending = Pending("prepare", key, parent, depth)
        ledger.touched.add(key)
        if parent:
            ledger.used_as_parent.add(parent)
        ledger.pending.append(pending)
        ledger.unknown["prepare"] += 1
        labels = unpack_labels(key) if self.turbo else {}
        request = api.PrepareSnapshotRequest(key=key, parent=parent, labels=labels)
        reply = await call(stub.prepare(request))
        ledger.pending.remove(pending)
        ledger.unknown["prepare"] -= 1
        ledger.acked["prepare"] += 1
        snap = Snap(ACTIVE, parent, self.index, depth)
        ledger.live[key] = snap
        await self.write(snap, key, list(reply.mounts))

    async def write(self, snap: Snap, key: str, mounts: list[Mount]) -> None:
        """A file into its writable dir; in the turbo variant, the layer.tar that holds it."""
        name = f"chaos-{key}"
        if self.turbo:
            await asyncio.to_thread(write_layer, mounts, name)
        else:
            await asyncio.to_thread(write_synced, writable_dir(mounts), name)
        snap.data = name

    async def commit(self, stub: api.SnapshotsStub, key: str) -> None:
        ledger = self.ledger
        if self.turbo and ledger.live[key].data is None:  # a layer.tar for every conversion
            reply = await call(stub.mounts(api.MountsRequest(key=key)))
            await self.write(ledger.live[key], key, list(reply.mounts))
        snap = ledger.live.pop(key)
        name = f"{key}-committed"
        ledger.touched.add(name)
        pending = Pending("commit", key, snap.parent, snap.depth, name=name)
        ledger.pending.append(pending)
        ledger.unknown["commit"] += 1
        await call(stub.commit(api.CommitSnapshotRequest(name=name, key=key)))
        ledger.pending.remove(pending)
        ledger.unknown["commit"] -= 1
        ledger.acked["commit"] += 1
        ledger.removed.add(key)
        ledger.live[name] = Snap(COMMITTED, snap.parent, self.index, snap.depth)

    async def remove(self, stub: api.SnapshotsStub, key: str) -> None:
        ledger = self.ledger
        snap = ledger.live.pop(key)
        pending = Pending("remove", key, snap.parent, snap.depth, kind=snap.kind)
        ledger.pending.append(pending)
        ledger.unknown["remove"] += 1
        await call(stub.remove(api.RemoveSnapshotRequest(key=key)))
        ledger.pending.remove(pending)
        ledger.unknown["remove"] -= 1
        ledger.acked["remove"] += 1
        ledger.removed.add(key)


# ---------------------------------------------------------------------- the checks


class Checker:
    def __init__(self, stub: api.SnapshotsStub, root: Path, ledger: Ledger, report: Report):
        self.stub = stub
        self.root = root
        self.snapshots = root / "snapshots"
        self.ledger = ledger
        self.report = report
        self.turbo = report.settings.variant == TURBO

    async def check(self, phase: str) -> dict[str, api.Info]:
        """Every invariant on the quiet server; resolves pending ops into known state."""
        ledger, report = self.ledger, self.report
        infos = await list_infos(self.stub)
        ids = await asyncio.to_thread(snapshot_ids, self.root)
        found = 0
        for key, snap in sorted(ledger.live.items()):
            if key in ledger.broken:
                continue
            problem = await self.whole(key, infos, ids, snap.kind, snap.parent, snap.data)
            if problem is None:
                found += 1
            else:
                report.add(ACKED_PRESENT, f"{phase}: acknowledged {key!r}: {problem}")
                ledger.broken.add(key)
        report.acked_live_expected = sum(1 for k in ledger.live if k not in ledger.broken)
        report.acked_live_found = found
        for key in sorted(ledger.removed):
            if key in infos:
                report.add(REMOVED_GONE, f"{phase}: {key!r} was removed (acknowledged), is listed")
                ledger.removed.discard(key)
        for pending in list(ledger.pending):
            await self.resolve(pending, infos, ids, phase)
        ledger.pending.clear()
        for name in sorted(set(infos) - ledger.touched):
            report.add(ALL_OR_NOTHING, f"{phase}: {name!r} is listed but no client made it")
        report.rounds_checked += 1
        return infos

    async def resolve(
        self, pending: Pending, infos: dict[str, api.Info], ids: dict[str, int], phase: str
    ) -> None:
        ledger, report = self.ledger, self.report
        key = pending.key
        if pending.op == "commit":
            key_there, name_there = key in infos, pending.name in infos
            if key_there == name_there:
                state = "both" if key_there else "neither"
                report.add(
                    ALL_OR_NOTHING,
                    f"{phase}: unacknowledged commit {key!r} -> {pending.name!r}: {state} listed",
                )
            if name_there:
                await self.adopt(pending.name, COMMITTED, pending, infos, ids, phase)
            else:
                ledger.removed.add(pending.name)
            if key_there and not name_there:
                if await self.adopt(key, ACTIVE, pending, infos, ids, phase):
                    await self.retry_commit(pending, phase)
            elif not key_there:
                ledger.removed.add(key)
            return
        if key in infos:
            await self.adopt(key, pending.kind, pending, infos, ids, phase)
        else:
            ledger.removed.add(key)
            report.pending_resolved_absent += 1

    async def adopt(
        self,
        key: str,
        kind: api.Kind,
        pending: Pending,
        infos: dict[str, api.Info],
        ids: dict[str, int],
        phase: str,
    ) -> bool:
        """A pending op's snapshot that is listed: it must be whole; then it is known."""
        problem = await self.whole(key, infos, ids, kind, pending.parent, None)
        self.report.pending_resolved_present += 1
        if problem is not None:
            self.report.add(
                ALL_OR_NOTHING,
                f"{phase}: unacknowledged {pending.op} of {key!r} left it half made: {problem}",
            )
            self.ledger.broken.add(key)
            return False
        # Back to the client that made it (keys start with c<index>-), to be worked on.
        owner = int(key.split("-", 1)[0][1:])
        self.ledger.live[key] = Snap(kind, pending.parent, owner, pending.depth)
        return True

    async def retry_commit(self, pending: Pending, phase: str) -> None:
        """A commit cut by a kill left the active snapshot: committing it again must work."""
        try:
            await call(
                self.stub.commit(api.CommitSnapshotRequest(name=pending.name, key=pending.key))
            )
        except Exception as exc:
            self.report.add(
                COMMIT_RETRY,
                f"{phase}: commit {pending.key!r} -> {pending.name!r} cut by a kill, "
                f"retried: {type(exc).__name__}: {exc}",
            )
            self.ledger.broken.add(pending.key)
            return
        self.ledger.acked["commit-retry"] += 1
        snap = self.ledger.live.pop(pending.key)
        self.ledger.removed.add(pending.key)
        self.ledger.removed.discard(pending.name)
        self.ledger.live[pending.name] = Snap(COMMITTED, snap.parent, snap.owner, snap.depth)

    async def whole(
        self,
        key: str,
        infos: dict[str, api.Info],
        ids: dict[str, int],
        kind: api.Kind,
        parent: str,
        data: str | None,
    ) -> str | None:
        """None if the snapshot is listed, Stats right, has its fs/ and (active) Mounts."""
        if key not in infos:
            return "not listed"
        try:
            info = (await call(self.stub.stat(api.StatSnapshotRequest(key=key)))).info
        except Exception as exc:
            return f"Stat failed: {type(exc).__name__}: {exc}"
        if info.kind != kind or info.parent != parent:
            return (
                f"Stat says {info.kind.name} on {info.parent!r}, expected {kind.name} on {parent!r}"
            )
        snapshot_id = ids.get(key)
        if snapshot_id is None:
            return "no row in the metadata database"
        if not (self.snapshots / str(snapshot_id) / "fs").is_dir():
            return f"snapshots/{snapshot_id}/fs is missing"
        if self.turbo:
            directory = self.snapshots / str(snapshot_id)
            problem = await asyncio.to_thread(conversion_problem, directory, kind)
            if problem is not None:
                return problem
        if kind != ACTIVE:
            return None
        try:
            reply = await call(self.stub.mounts(api.MountsRequest(key=key)))
        except Exception as exc:
            return f"Mounts failed: {type(exc).__name__}: {exc}"
        mounts = list(reply.mounts)
        written = layer_tar_of(mounts) if self.turbo else writable_dir(mounts) / str(data)
        if data is not None and not written.exists():
            return f"the fsynced {written.name} is gone"
        return None


# ---------------------------------------------------------------------- the run


async def run_chaos(settings: Settings, sim: RunningSimulator | None) -> Report:
    report = Report(settings)
    ledger = Ledger()
    started = time.monotonic()
    workdir = short_tmpdir()
    if sim is None:
        server = ServerProcess(workdir)
    else:
        config = settings_on(sim, **VARIANT_CONFIG[settings.variant])
        # The tools' scratch files (tcmusim's turboOCI-apply loop-mounts there) stay in the
        # workdir, whose mounts are cleaned up at the end: SIGKILL leaves them behind.
        scratch = workdir / "tmp"
        scratch.mkdir(parents=True)
        env = {"TMPDIR": str(scratch)}
        server = ServerProcess.with_config(workdir, config, start_timeout=30.0, env=env)
    rng = random.Random(f"{settings.seed}-{settings.variant}")
    try:
        await asyncio.to_thread(server.start)
        for round_no in range(settings.kills):
            await load_and_kill(server, ledger, settings, rng, round_no)
            report.kills += 1
            for intent in await asyncio.to_thread(open_intents, server.root):
                report.interrupted[intent.split()[0]] += 1
            await asyncio.to_thread(server.start)
            # Start-up settles every interrupted operation before it serves.
            left = await asyncio.to_thread(open_intents, server.root)
            if left:
                report.add(INTENTS_SETTLED, f"after kill {report.kills}: still open: {left}")
            await checked(server, ledger, report, f"after kill {report.kills}")
        await finish(server, ledger, report, sim)
    finally:
        with contextlib.suppress(Exception):
            if server.running():
                server.kill()
        force_clean(sim, [workdir])
        shutil.rmtree(workdir, ignore_errors=True)
    report.acked = ledger.acked
    report.unknown = ledger.unknown
    report.errors = ledger.errors
    report.runtime = time.monotonic() - started
    return report


async def load_and_kill(
    server: ServerProcess,
    ledger: Ledger,
    settings: Settings,
    rng: random.Random,
    round_no: int,
) -> None:
    stop = asyncio.Event()
    channels = [Channel(path=str(server.address)) for _ in range(settings.clients)]
    clients = [
        Client(i, random.Random(f"{settings.seed}-{settings.variant}-{round_no}-{i}"), ledger,
               round_no, stop, turbo=settings.variant == TURBO)
        for i in range(settings.clients)
    ]  # fmt: skip
    tasks = [
        asyncio.create_task(client.run(api.SnapshotsStub(channel)))
        for client, channel in zip(clients, channels, strict=True)
    ]
    if settings.cleanup_interval:
        channels.append(Channel(path=str(server.address)))
        stub = api.SnapshotsStub(channels[-1])
        tasks.append(asyncio.create_task(keep_cleaning(stub, ledger, settings, stop)))
    try:
        if round_no % PROGRESS_EVERY == PROGRESS_EVERY - 1:
            await acked_once_more(ledger, "commit", CALL_TIMEOUT)
        await asyncio.sleep(rng.uniform(settings.min_delay, settings.max_delay))
        stop.set()  # no new calls; the ones in flight are cut by the kill
        await asyncio.to_thread(server.kill)  # SIGKILL to obdsnap's process group
        _, late = await asyncio.wait(tasks, timeout=CALL_TIMEOUT + 5)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for channel in channels:
            channel.close()


async def acked_once_more(ledger: Ledger, operation: str, within: float) -> None:
    """Wait until the clients get one more OK for ``operation``, for at most ``within`` s."""
    before = ledger.acked[operation]
    for _ in range(int(within / 0.05)):
        if ledger.acked[operation] != before:
            return
        await asyncio.sleep(0.05)


async def keep_cleaning(
    stub: api.SnapshotsStub, ledger: Ledger, settings: Settings, stop: asyncio.Event
) -> None:
    """Cleanup now and then during the load, as containerd's GC calls it."""
    while not stop.is_set():
        try:
            await call(stub.cleanup(api.CleanupRequest()))
            ledger.acked["cleanup"] += 1
        except Exception as exc:
            if not stop.is_set():
                ledger.errors[f"Cleanup: {type(exc).__name__}: {str(exc)[:160]}"] += 1
        await asyncio.sleep(settings.cleanup_interval)


async def checked(server: ServerProcess, ledger: Ledger, report: Report, phase: str) -> None:
    channel = Channel(path=str(server.address))
    try:
        await Checker(api.SnapshotsStub(channel), server.root, ledger, report).check(phase)
    finally:
        channel.close()


async def finish(
    server: ServerProcess, ledger: Ledger, report: Report, sim: RunningSimulator | None
) -> None:
    """Cleanup, then orphans; then remove everything and stop: nothing may be left."""
    channel = Channel(path=str(server.address))
    stub = api.SnapshotsStub(channel)
    try:
        await call(stub.cleanup(api.CleanupRequest()))
        ids = await asyncio.to_thread(snapshot_ids, server.root)
        report.orphans_after_cleanup = orphans(server.root, ids, report, sim)
        await remove_all(stub, report)
        await call(stub.cleanup(api.CleanupRequest()))
    finally:
        channel.close()
    status = await asyncio.to_thread(server.stop)
    if status != 0:
        report.add(TEARDOWN, f"obdsnap exited with {status} on SIGTERM")
    snapshots = server.root / "snapshots"
    left = sorted(os.listdir(snapshots)) if snapshots.exists() else []
    if left:
        report.add(TEARDOWN, f"snapshots/ after removing everything: {left}")
    if sim is not None:
        for leftover in device_leftovers(server.root, set(), sim):
            report.add(TEARDOWN, f"after removing everything: {leftover}")


def orphans(root: Path, ids: dict[str, int], report: Report, sim: RunningSimulator | None) -> int:
    snapshots = root / "snapshots"
    known = set(ids.values())
    count = 0
    for entry in sorted(os.listdir(snapshots)):
        if not entry.isdigit() or int(entry) not in known:
            report.add(ORPHANS, f"snapshots/{entry} is left after Cleanup")
            count += 1
    if sim is not None:
        for leftover in device_leftovers(root, known, sim):
            report.add(DEVICE_ORPHANS, f"after Cleanup: {leftover}")
            count += 1
    return count


def device_leftovers(root: Path, known: set[int], sim: RunningSimulator) -> list[str]:
    """configfs objects, mounts and loop devices that no existing snapshot owns."""
    found: list[str] = []
    attached: set[int] = set()
    hba = sim.configfs / "target/core" / HBA
    for name in sorted(os.listdir(hba)) if hba.is_dir() else []:
        if name.startswith("dev_") and name[4:].isdigit():
            if int(name[4:]) in known:
                attached.add(int(name[4:]))
            else:
                found.append(f"configfs target {name} of no snapshot")
    loopback = sim.configfs / "target/loopback"
    for name in sorted(os.listdir(loopback)) if loopback.is_dir() else []:
        if name.startswith("naa.199") and int(name[7:]) not in known:
            found.append(f"configfs loopback {name} of no snapshot")
    snapshots = root / "snapshots"
    for point in mounts_under(root):
        owner = id_of_path(point, snapshots)
        if owner is None or owner not in known:
            found.append(f"mount {point} of no snapshot")
    loops = sim.loop_devices()
    if len(loops) > len(attached):
        found.append(f"loop devices {loops}, but only devices {sorted(attached)} are attached")
    return found


async def remove_all(stub: api.SnapshotsStub, report: Report) -> None:
    """Children first; what cannot be removed is a teardown problem."""
    for _ in range(MAX_DEPTH + 3):
        infos = await list_infos(stub)
        if not infos:
            return
        parents = {info.parent for info in infos.values()}
        for name in sorted(set(infos) - parents):
            try:
                await call(stub.remove(api.RemoveSnapshotRequest(key=name)))
            except Exception as exc:
                report.add(TEARDOWN, f"Remove {name!r}: {type(exc).__name__}: {exc}")
                return
    report.add(TEARDOWN, f"still listed: {sorted(await list_infos(stub))}")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
