"""Tests of obdsnap.logs: one line a record, text (journald-aware) and JSON."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from obdsnap.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    hold_logging,
    syslog_priority,
    under_journald,
)

FIELDS = {
    "rpc": "Prepare",
    "key": "default/7/rootfs",
    "id": 12,
    "step": "open",
    "reason": "bad magic",
}


def record(
    level: int = logging.WARNING,
    message: str = "Prepare failed: %s",
    args: tuple[object, ...] = ("boom",),
    *,
    exc_info: bool = False,
    fields: Mapping[str, object] | None = None,
) -> logging.LogRecord:
    info = None
    if exc_info:
        try:
            raise ValueError("first line\nsecond line")
        except ValueError:
            info = sys.exc_info()
    made = logging.LogRecord("obdsnap.service", level, "/src/service.py", 42, message, args, info)
    made.funcName = "handle"
    for name, value in (fields or {}).items():
        setattr(made, name, value)
    return made


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.CRITICAL, "<3>"),
        (logging.ERROR, "<3>"),
        (logging.WARNING, "<4>"),
        (logging.INFO, "<6>"),
        (logging.DEBUG, "<7>"),
    ],
)
def test_journald_lines_start_with_the_syslog_priority_and_have_no_timestamp(
    level: int, prefix: str
) -> None:
    line = TextFormatter(journald=True, report_caller=False).format(record(level))
    assert line == f"{prefix}{logging.getLevelName(level)} obdsnap.service: Prepare failed: boom"
    assert syslog_priority(level) == int(prefix[1])


def test_text_lines_outside_journald_start_with_the_time() -> None:
    line = TextFormatter(journald=False, report_caller=False).format(record())
    stamp, _, rest = line.partition(" WARNING ")
    datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
    assert rest == "obdsnap.service: Prepare failed: boom"


def test_text_carries_the_fields_readably() -> None:
    line = TextFormatter(journald=True, report_caller=False).format(record(fields=FIELDS))
    assert line == (
        "<4>WARNING obdsnap.service: Prepare failed: boom "
        'rpc=Prepare key=default/7/rootfs id=12 step=open reason="bad magic"'
    )


def test_empty_fields_are_left_out() -> None:
    line = TextFormatter(journald=True, report_caller=False).format(
        record(fields={"rpc": "Stat", "key": "", "id": None})
    )
    assert line.endswith("Prepare failed: boom rpc=Stat")


@pytest.mark.parametrize("journald", [True, False])
def test_text_is_one_line_even_with_a_multi_line_exception(journald: bool) -> None:
    formatter = TextFormatter(journald=journald, report_caller=True)
    line = formatter.format(
        record(logging.ERROR, "a\nb", (), exc_info=True, fields={"rpc": "Mounts"})
    )
    assert "\n" not in line
    assert " /src/service.py:42: a\\nb rpc=Mounts\\nTraceback (most recent call last):" in line
    assert line.endswith("ValueError: first line\\nsecond line")
    if journald:
        assert line.startswith("<3>ERROR obdsnap.service /src/service.py:42: ")


def test_json_has_every_field_on_one_line() -> None:
    line = JsonFormatter(report_caller=False).format(
        record(logging.ERROR, exc_info=True, fields=FIELDS)
    )
    assert "\n" not in line
    document = json.loads(line)
    exception = document.pop("exception")
    assert exception.startswith("Traceback (most recent call last):\n")
    assert exception.endswith("ValueError: first line\nsecond line")
    ts = document.pop("ts")
    assert ts.endswith("Z") and "T" in ts
    parsed = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None and parsed.microsecond == parsed.microsecond
    assert abs(parsed.timestamp() - record().created) < 5
    assert document == {
        "level": "error",
        "msg": "Prepare failed: boom",
        "logger": "obdsnap.service",
        **FIELDS,
    }


def test_json_levels_and_caller() -> None:
    formatter = JsonFormatter(report_caller=True)
    for level, name in [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warning"),
    ]:
        document = json.loads(formatter.format(record(level)))
        assert document["level"] == name
        assert document["file"] == "/src/service.py:42"
        assert document["func"] == "handle"
    assert "file" not in json.loads(JsonFormatter(report_caller=False).format(record()))


def test_journald_is_recognised_by_the_stream_it_names(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as stream:
        status = os.fstat(stream.fileno())
        named = f"{status.st_dev}:{status.st_ino}"
        assert under_journald({"JOURNAL_STREAM": named}, stream)
        assert not under_journald({}, stream)
        assert not under_journald(
            {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino + 1}"}, stream
        )
        assert not under_journald({"JOURNAL_STREAM": "garbage"}, stream)
    assert not under_journald({"JOURNAL_STREAM": named}, io.StringIO())


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_configure_logging_quiets_the_metrics_access_log(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging(logging.INFO, log_format="json", stream=out)
    logging.getLogger("aiohttp.access").info("GET /metrics 200")
    logging.getLogger("obdsnap.test").info("kept", extra={"rpc": "Stat"})
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["msg"] for line in lines] == ["kept"]
    assert json.loads(lines[0])["rpc"] == "Stat"


def test_records_held_before_the_format_is_known_are_written_in_it(
    restore_logging: None,
) -> None:
    hold_logging()
    logging.getLogger("obdsnap.config").warning("config: ignoring unknown key %r", "tenant")
    logging.getLogger("obdsnap.config").debug("below the level")
    out = io.StringIO()
    configure_logging(logging.INFO, log_format="json", stream=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["msg"] == "config: ignoring unknown key 'tenant'"
