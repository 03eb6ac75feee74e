"""The stores benchmarks/populate.py writes: what obdsnap reads back is the plan."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from populate import Plan, fill_root, records

from obdsnap.layout import Layout
from obdsnap.storage import Kind
from obdsnap.storage.sqlite import SqliteDatabase, Stored


@pytest.mark.parametrize("total", [2, 7, 17, 100])
def test_each_container_sits_on_its_chains_top(total: int) -> None:
    plan = Plan.for_total(total, depth=4)
    chains = plan.chains
    for index in range(plan.active):
        assert plan.container(index) == (f"container-{index:06d}", chains[index % len(chains)][-1])


def test_records_come_parents_first_with_ids_from_one() -> None:
    made = records(Plan.for_total(20, depth=3))
    assert [record.id for record in made] == list(range(1, 21))
    seen: set[str] = set()
    for record in made:
        assert record.parent == "" or record.parent in seen
        seen.add(record.key)
    assert sum(record.kind == Kind.ACTIVE for record in made) == 10


def test_fill_root_writes_a_store_obdsnap_reads(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert fill_root(root, Plan.for_total(10, depth=2)) == 10
    layout = Layout(root)
    stored = asyncio.run(read(layout.metadata_db))
    assert (len(stored.records), stored.last_id) == (10, 10)
    assert all(layout.fs_dir(snapshot_id).is_dir() for snapshot_id in range(1, 11))
    assert layout.work_dir(10).is_dir() and not layout.work_dir(1).exists()


async def read(path: Path) -> Stored:
    database = SqliteDatabase(path)
    try:
        return await database.open()
    finally:
        await database.close()
