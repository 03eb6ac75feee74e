"""A Go root of 10,000 snapshots, written once per session (containerd's MetaStore is slow
to fill), copied by each test that takes it over."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .gohelpers import go_dump, many_ops, write_go_metadata

MANY = 10_000


@pytest.fixture(scope="session")
def many_snapshots_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """metadata.db of 10,000 snapshots and what containerd reads from it."""
    db = tmp_path_factory.mktemp("go-many") / "metadata.db"
    write_go_metadata(db, many_ops(MANY))
    return db, go_dump(db)


def copy_go_root(db: Path, root: Path) -> None:
    (root / "snapshots").mkdir(parents=True)
    shutil.copyfile(db, root / "metadata.db")
