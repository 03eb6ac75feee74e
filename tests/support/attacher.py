"""Running ``obdsnap attach`` / ``obdsnap detach`` as an operator does, on a server's simulator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from support.block import REPO_ROOT, Obd
from support.processes import run


async def obdsnap_device_command(
    obd: Obd, *args: str, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """``obdsnap <args> --boot-config <obd's boot config>`` (its configfs and sysfs roots), run
    from ``cwd`` to its end."""
    boot = obd.server.config_path
    argv = (sys.executable, "-m", "obdsnap", *args, "--boot-config", str(boot))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return await asyncio.to_thread(run, *argv, check=False, cwd=cwd, env=env, timeout=120)
