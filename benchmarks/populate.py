"""Large stores, written fast: the metadata straight through obdsnap's storage layer.

Building 100,000 snapshots through the API (Prepare + Commit, about a
millisecond each) takes minutes; ``fill_root`` writes the same records into
a new root's metadata.db with ``write_new_store`` (one SQLite transaction, as
the import of a Go root does) and makes each snapshot's directory as Prepare
would, so obdsnap starts on it as on a root it built itself. ``fill_go_root``
writes the same plan with containerd's own MetaStore (the tests' gometa
program), for the reference to serve.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]  # obdsnap, test helpers

from migration.gohelpers import (  # noqa: E402
    GoOps,
    dump_snapshots,
    go_dump,
    make_snapshot_dirs,
    write_go_metadata,
)

from obdsnap.layout import Layout  # noqa: E402
from obdsnap.storage import Info, Kind, Record  # noqa: E402
from obdsnap.storage.sqlite import write_new_store  # noqa: E402

LABEL_PREFIX = "containerd.io/snapshot/bench."


@dataclass(frozen=True)
class Plan:
    """The store: ``committed`` layers in chains of up to ``depth``, ``active``
    snapshots spread over them, ``labels`` labels on every snapshot."""

    committed: int
    active: int
    depth: int
    labels: int

    @classmethod
    def for_total(cls, total: int, depth: int = 8, labels: int = 3) -> Plan:
        committed = max(1, total // 2)
        return cls(
            committed=committed, active=max(1, total - committed), depth=depth, labels=labels
        )

    @property
    def chains(self) -> list[list[str]]:
        names = [f"layer-{i:06d}" for i in range(self.committed)]
        return [names[i : i + self.depth] for i in range(0, len(names), self.depth)]

    def container(self, index: int) -> tuple[str, str]:
        """The key of the ``index``-th active snapshot and its parent, a chain's top."""
        chain = index % -(-self.committed // self.depth)  # chains: the committed ones, rounded up
        top = min(self.committed, (chain + 1) * self.depth) - 1
        return f"container-{index:06d}", f"layer-{top:06d}"

    @property
    def containers(self) -> list[str]:
        return [f"container-{index:06d}" for index in range(self.active)]

    def label_set(self, key: str) -> dict[str, str]:
        # Digest-sized values, like the image and layer references containerd
        # and its clients put on snapshots.
        digest = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return {f"{LABEL_PREFIX}{n}": f"{digest}-{n}" for n in range(self.labels)}


def records(plan: Plan) -> list[Record]:
    """The plan's snapshots, parents first, with IDs from 1; plain overlayfs ones."""
    made: list[Record] = []

    def add(key: str, parent: str, kind: Kind) -> None:
        info = Info(key, parent, kind, plan.label_set(key))
        made.append(Record(len(made) + 1, info, rw_mode="overlayfs"))

    for chain in plan.chains:
        for depth, name in enumerate(chain):
            add(name, chain[depth - 1] if depth else "", Kind.COMMITTED)
    for index in range(plan.active):
        add(*plan.container(index), Kind.ACTIVE)
    return made


def fill_root(root: Path, plan: Plan) -> int:
    """Blocking: a new root at ``root`` holding the plan's store; the number of snapshots."""
    layout = Layout(root)
    layout.create_root()
    made = records(plan)
    write_new_store(layout.metadata_db, made, len(made))
    for record in made:
        directory = layout.snapshot_dir(record.id)
        layout.build_new_snapshot_dir(directory, active=record.kind == Kind.ACTIVE, parent_id=None)
    return len(made)


def fill_go_root(root: Path, plan: Plan) -> int:
    """Blocking: a Go snapshotter's root holding the plan; the number of snapshots."""
    ops = GoOps()
    for chain in plan.chains:
        for depth, name in enumerate(chain):
            ops.layer(name, chain[depth - 1] if depth else "", plan.label_set(name))
    for index in range(plan.active):
        key, parent = plan.container(index)
        ops.prepare(key, parent, plan.label_set(key))
    (root / "snapshots").mkdir(parents=True)
    write_go_metadata(root / "metadata.db", ops)
    found = dump_snapshots(go_dump(root / "metadata.db"))
    make_snapshot_dirs(root, {int(item["id"]): item["kind"] for item in found.values()})
    return len(found)
