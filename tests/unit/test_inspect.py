"""The inspection commands' rendering, and their reading of a root built by hand."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from obdsnap.config import BootConfig
from obdsnap.device.tcmu import dev_config, wwn
from obdsnap.inspect import render
from obdsnap.inspect.state import DeviceRow, InspectError, Inspector
from obdsnap.layout import Layout
from obdsnap.runstatus import ReconcileSummary, ServingStatus, read_status, write_status
from obdsnap.storage.model import Info, Kind, Record, Usage
from obdsnap.storage.sqlite import write_new_store

# ---------------------------------------------------------------------- rendering


def test_a_table_aligns_columns_under_its_header_and_marks_empty_cells() -> None:
    text = render.table(["ID", "NAME", "NOTE"], [["1", "a", ""], ["12", "", "last column"]])
    assert text == "ID  NAME  NOTE\n1   a     -\n12  -     last column\n"


def test_a_table_without_rows_is_its_header() -> None:
    assert render.table(["ID", "KEY"], []) == "ID  KEY\n"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-1, "0s"), (0, "0s"), (119.9, "119s"), (120, "2m00s"), (7199, "119m59s"), (7200, "2h00m")],
)
def test_ages_are_short(seconds: float, text: str) -> None:
    assert render.age_text(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0B"), (1023, "1023B"), (1536, "1.5KiB"), (5 << 30, "5.0GiB")]
)
def test_sizes_are_binary_units(size: int, text: str) -> None:
    assert render.size_text(size) == text


def device_row(snapshot_id: int, state: str, **fields: object) -> DeviceRow:
    values: dict[str, object] = {
        "key": f"k{snapshot_id}",
        "target": True,
        "device_node": "",
        "ours": False,
        "mountpoint": f"/r/snapshots/{snapshot_id}/block/mountpoint",
        "mounted": False,
        "result": "",
        **fields,
    }
    return DeviceRow(snapshot_id, state=state, **values)  # type: ignore[arg-type]


def test_orphans_stand_out_in_the_devices_table() -> None:
    rows = [
        device_row(
            3, "attached", device_node="/dev/sdb", ours=True, mounted=True, result="success"
        ),
        device_row(9, "orphan", key=""),
        device_row(5, "failed", target=False, result="failed:no such blob"),
    ]
    lines = render.devices_table(rows).splitlines()
    assert lines[0].split() == [
        "ID",
        "TARGET",
        "DEVICE",
        "OURS",
        "STATE",
        "MOUNTED",
        "KEY",
        "RESULT",
    ]
    assert lines[1].split() == ["3", "dev_3", "/dev/sdb", "yes", "attached", "yes", "k3", "success"]
    assert lines[2].split() == ["9", "dev_9", "-", "no", "ORPHAN", "no", "-", "-"]
    assert lines[3].split()[:5] == ["5", "-", "-", "no", "failed"]
    assert lines[3].endswith("failed:no such blob")
    document = render.devices_json(rows)["devices"]
    assert [(row["state"], row["orphan"]) for row in document] == [
        ("attached", False),
        ("orphan", True),
        ("failed", False),
    ]


# ---------------------------------------------------------------------- reading a root


def record(snapshot_id: int, key: str, kind: Kind, parent: str = "") -> Record:
    return Record(snapshot_id, Info(key, parent, kind, {}, 1, 1), Usage(4096, 2), "overlayfs")


@pytest.fixture
def node(tmp_path: Path) -> tuple[Inspector, Layout, Path]:
    """A root with three snapshots; configfs and sysfs trees shaped like the kernel's."""
    layout = Layout(tmp_path / "root")
    layout.create_root()
    records = [
        record(1, "layer", Kind.COMMITTED),
        record(2, "ctr", Kind.ACTIVE, "layer"),
        record(3, "marked", Kind.COMMITTED),
    ]
    write_new_store(layout.metadata_db, records, 3)
    for item in records:
        layout.block(item.id).path.mkdir(parents=True)
        layout.block(item.id).result_file.write_text("")
    configfs, sysfs = tmp_path / "configfs", tmp_path / "sysfs"
    config = BootConfig(root=str(layout.root), configfs_root=str(configfs), sysfs_root=str(sysfs))
    return Inspector(config), layout, configfs


def add_target(configfs: Path, snapshot_id: int, config_path: Path) -> None:
    target = configfs / "target/core/user_999999999" / f"dev_{snapshot_id}"
    target.mkdir(parents=True)
    (target / "info").write_text(
        f"Status: ACTIVATED\n        Config: {dev_config(config_path)} Size: 1\n"
    )


def test_devices_flag_orphans_and_tell_foreign_targets_apart(
    node: tuple[Inspector, Layout, Path], tmp_path: Path
) -> None:
    inspector, layout, configfs = node
    add_target(configfs, 1, layout.block(1).config)  # ours, no mark yet
    add_target(configfs, 7, layout.block(7).config)  # no snapshot 7 here
    add_target(configfs, 8, tmp_path / "elsewhere/config.v1.json")  # another snapshotter's
    layout.block(3).mark.write_text("/dev/sdq")  # a mark, no device
    layout.block(2).result_file.write_text("success\nfailed:timeout\n")
    rows = {row.snapshot_id: row for row in inspector.devices(inspector.metadata())}
    assert {i: (r.state, r.ours, r.orphan) for i, r in rows.items()} == {
        1: ("attaching", True, False),
        2: ("failed", False, False),
        3: ("missing", False, True),
        7: ("orphan", False, True),
        8: ("foreign", False, False),
    }
    assert rows[2].result == "failed:timeout"
    assert (rows[1].key, rows[7].key) == ("layer", "")
    assert not (configfs / "target/loopback" / wwn(1)).exists()


def test_ls_filters_as_containerd_does(node: tuple[Inspector, Layout, Path]) -> None:
    inspector, _, _ = node
    metadata = inspector.metadata()
    keys = [row.record.key for row in inspector.snapshots(metadata, ["parent==layer"], usage=False)]
    assert keys == ["ctr"]
    either = inspector.snapshots(metadata, ["name==ctr", "name==marked"], usage=True)
    assert [row.record.key for row in either] == ["ctr", "marked"]
    assert either[1].usage == Usage(4096, 2)  # committed: the recorded usage
    with pytest.raises(InspectError, match=r"^bad filter: "):
        inspector.snapshots(metadata, ["name=="], usage=False)


def test_s10_ls_usage_of_a_committed_block_layer_is_measured_now(
    node: tuple[Inspector, Layout, Path],
) -> None:
    """DESIGN-v1 §10: as Usage answers, a block layer is walked, its mountpoint left out."""
    inspector, layout, _ = node
    block = layout.block(3)
    block.config.write_text("{}")  # a remote block layer
    (block.mountpoint / "inside").mkdir(parents=True)
    layout.fs_dir(3).mkdir()
    [row] = inspector.snapshots(inspector.metadata(), ["name==marked"], usage=True)
    assert row.storage_type == "remote"
    assert row.usage is not None
    assert row.usage.inodes == 4  # fs/; block/, its result file and its config


def test_a_stopped_root_is_read_without_creating_sqlite_files(
    node: tuple[Inspector, Layout, Path],
) -> None:
    inspector, layout, _ = node
    before = sorted(os.listdir(layout.root))
    assert len(inspector.metadata().records) == 3
    assert sorted(os.listdir(layout.root)) == before


def test_a_missing_root_or_database_is_one_line(tmp_path: Path) -> None:
    missing = Inspector(BootConfig(root=str(tmp_path / "none")))
    with pytest.raises(InspectError, match=r"^root .* does not exist$"):
        missing.metadata()
    (tmp_path / "empty").mkdir()
    empty = Inspector(BootConfig(root=str(tmp_path / "empty")))
    with pytest.raises(InspectError, match=r"metadata\.db does not exist"):
        empty.metadata()
    assert os.listdir(tmp_path / "empty") == []


def test_intents_have_their_age(node: tuple[Inspector, Layout, Path]) -> None:
    inspector, layout, _ = node
    with sqlite3.connect(layout.metadata_db) as db:
        db.execute("INSERT INTO intents VALUES (2, 'attach', 1000000)")
    now = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=61)
    (row,) = inspector.intents(inspector.metadata(), now)
    assert (row.key, row.intent.operation.value, row.age_seconds) == ("ctr", "attach", 60.0)
    assert render.intents_table([row]).splitlines()[1].split() == [
        "2",
        "attach",
        "1970-01-01T00:00:01+00:00",
        "60s",
        "ctr",
    ]


def test_the_status_file_round_trips(tmp_path: Path) -> None:
    summary = ReconcileSummary("a", "b", 0.5, 3, ["attach of snapshot 2 rolled back"], 1)
    status = ServingStatus(42, "0.1.0", "/run/x.sock", "s", summary)
    path = tmp_path / "status.json"
    write_status(path, status)
    assert read_status(path) == status
    assert json.loads(path.read_text())["statusVersion"] == 1
    assert os.listdir(tmp_path) == ["status.json"]
    assert read_status(tmp_path / "none.json") is None
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a status file"):
        read_status(path)


@pytest.mark.parametrize("command", ["status", "ls", "devices", "intents"])
def test_each_command_refuses_a_missing_root_in_one_line(tmp_path: Path, command: str) -> None:
    root = tmp_path / "none"
    done = subprocess.run(
        [sys.executable, "-m", "obdsnap", command, "--root", str(root), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == f"obdsnap: root {root} does not exist\n"
    assert done.stdout == ""
    assert not root.exists()
