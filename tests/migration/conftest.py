"""Fixtures of the migration tests: an obdsnap server and a channel to it, and a Go root
of 10,000 snapshots, written once per session (containerd's MetaStore is slow to fill),
copied by each test that takes it over."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from support.server_process import ServerProcess

from .gohelpers import go_dump, many_ops, write_go_metadata

MANY = 10_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """An obdsnap on tmp_path, not started: each test lays its root out first."""
    process = ServerProcess(tmp_path)
    yield process
    if process.running():
        assert process.stop() == 0, process.log()


@pytest.fixture
async def channel(server: ServerProcess) -> AsyncIterator[Channel]:
    channel = Channel(path=str(server.address))
    yield channel
    channel.close()


@pytest.fixture(scope="session")
def many_snapshots_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """metadata.db of 10,000 snapshots and what containerd reads from it."""
    db = tmp_path_factory.mktemp("go-many") / "metadata.db"
    write_go_metadata(db, many_ops(MANY))
    return db, go_dump(db)


def copy_go_root(db: Path, root: Path) -> None:
    (root / "snapshots").mkdir(parents=True)
    shutil.copyfile(db, root / "metadata.db")
