"""Logging: one line a record, as text (journald-aware) or as JSON.

Records may carry the fields of a failed call (``extra=``): ``rpc``, ``key``,
``id``, ``step`` and ``reason``. The text format appends them as ``name=value``;
the JSON format makes them keys of the object.

Under journald (stderr is the stream ``JOURNAL_STREAM`` names) the text format
leaves out its own timestamp and starts each line with a ``<N>`` syslog
priority, so ``journalctl -p warning`` selects by level.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

FIELDS = ("rpc", "key", "id", "step", "reason")
# Libraries whose debug output is per frame or per statement: only at "trace".
CHATTY_LIBRARIES = ("hpack", "h2", "grpclib", "aiosqlite", "asyncio")
# aiohttp's access log: one line per metrics scrape.
QUIET_LOGGERS = ("aiohttp.access",)
_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


def syslog_priority(level: int) -> int:
    """The syslog priority of a logging level: 3 error, 4 warning, 6 info, 7 debug."""
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    if level >= logging.INFO:
        return 6
    return 7


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The call's fields a record carries, in FIELDS order."""
    found = {}
    for name in FIELDS:
        value = getattr(record, name, None)
        if value is not None and value != "":
            found[name] = value
    return found


class TextFormatter(logging.Formatter):
    """``[<N>][time ]LEVEL logger[ file:line]: message name=value...``, on one line."""

    def __init__(self, *, journald: bool, report_caller: bool) -> None:
        caller = " %(pathname)s:%(lineno)d" if report_caller else ""
        timestamp = "" if journald else "%(asctime)s "
        super().__init__(f"{timestamp}%(levelname)s %(name)s{caller}: %(message)s")
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record) + "".join(
            f" {name}={_text_value(value)}" for name, value in fields_of(record).items()
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        line = _one_line(line)
        if self._journald:
            return f"<{syslog_priority(record.levelno)}>{line}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, msg, logger, the call's fields, exception."""

    def __init__(self, *, report_caller: bool) -> None:
        super().__init__()
        self._report_caller = report_caller

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
            **fields_of(record),
        }
        if self._report_caller:
            document["file"] = f"{record.pathname}:{record.lineno}"
            document["func"] = record.funcName
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = record.stack_info
        # ensure_ascii: any newline or control character is escaped, the object stays one line.
        return json.dumps(document, default=str)


def under_journald(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd names in ``JOURNAL_STREAM``."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


class _Held(logging.Handler):
    """Keeps records until the format they are to be written in is known."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def hold_logging(level: int = logging.INFO) -> None:
    """Keep records (e.g. the config's own warnings) for the next configure_logging."""
    _replace_handlers(_Held(), level)


def make_formatter(
    log_format: str, *, report_caller: bool, journald: bool = False
) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(report_caller=report_caller)
    return TextFormatter(journald=journald, report_caller=report_caller)


def configure_logging(
    level: int,
    *,
    log_format: str = "text",
    report_caller: bool = False,
    trace: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Send every record at ``level`` and above to ``stream`` (stderr), one line each."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        make_formatter(
            log_format,
            report_caller=report_caller,
            journald=under_journald(os.environ, stream),
        )
    )
    held = _replace_handlers(handler, level)
    for record in held:
        if record.levelno >= level:
            handler.handle(record)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(level if trace else max(level, logging.INFO))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def _replace_handlers(handler: logging.Handler, level: int) -> list[logging.LogRecord]:
    """Make ``handler`` the only handler of the root logger; the records held until now."""
    root = logging.getLogger()
    held: list[logging.LogRecord] = []
    for old in list(root.handlers):
        if isinstance(old, _Held):
            held += old.records
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return held


def _text_value(value: object) -> str:
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _one_line(text: str) -> str:
    """Newlines (a traceback, a stack dump) as ``\\n``: one record, one line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _rfc3339(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
