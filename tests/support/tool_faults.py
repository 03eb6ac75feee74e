"""Tools of ``overlaybd_util_bin_dir`` that misbehave: a wrapper swapped for a script of the
test's, and the real one put back afterwards."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_tool(tools_dir: Path, name: str, body: str) -> Iterator[Path]:
    """``name`` runs the shell script ``body`` instead, in which ``$REAL`` is the real tool.

    Yields where the real tool is while replaced.
    """
    tool = tools_dir / name
    real = tool.with_name(f"{name}.real")
    tool.rename(real)
    try:
        tool.write_text(f"#!/bin/sh\nREAL={shlex.quote(str(real))}\n{body}")
        tool.chmod(0o755)
        yield real
    finally:
        real.replace(tool)


def failing_tool(
    tools_dir: Path, name: str, *, after_real_run: bool = False, message: str = ""
) -> contextlib.AbstractContextManager[Path]:
    """``name`` exits 1 with ``message`` on stderr.

    ``after_real_run``: the real tool runs first, so whatever it writes is on disk when
    the failure is reported (what the caller must then clean up).
    """
    text = message or f"{name}: failure injected by the test"
    real_run = '"$REAL" "$@" >/dev/null 2>&1\n' if after_real_run else ""
    return replaced_tool(tools_dir, name, f"{real_run}echo {shlex.quote(text)} >&2\nexit 1\n")
