"""Run the simulator from tests: ``with running_simulator(tmp_path) as sim: ...``.

The simulator runs in its own process (it mounts FUSE and handles signals), on
directories under ``tmpdir``::

    configfs/  sysfs/  blobs/  tools/  state/  control.json  simulator.log

``sim.control.set(fail_open="boom")`` rewrites the control file atomically
(:mod:`tcmusim.knobs` says what it may hold); ``only(value, "dev_3")`` restricts
a knob to some devices. On exit the simulator gets SIGTERM and must clean up;
if it does not stop, it is killed and its mounts and loop devices are removed.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tcmusim import loopdev, tools
from tcmusim.loopdev import LOOP_JOURNAL

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
HBA = "user_999999999"


def missing_requirements() -> str | None:
    """Why the simulator cannot run here, or None."""
    if os.geteuid() != 0:
        return "the TCMU simulator needs root (FUSE mounts, loop devices)"
    if not os.path.exists("/dev/fuse"):
        return "the TCMU simulator needs /dev/fuse"
    if not os.path.exists("/dev/loop-control"):
        return "the TCMU simulator needs loop devices (/dev/loop-control)"
    for command in ("losetup", "mkfs.ext4", "debugfs", "umount"):
        if shutil.which(command) is None:
            return f"the TCMU simulator needs {command}"
    if importlib.util.find_spec("mfusepy") is None:
        return "the TCMU simulator needs mfusepy (pip install mfusepy)"
    if ctypes.util.find_library("fuse3") is None:
        return "the TCMU simulator needs libfuse3 (apt-get install fuse3)"
    return None


def only(value: object, *devices: str | int) -> dict[str, object]:
    """A knob value that applies to ``devices`` only (``"dev_3"`` or ``3``)."""
    return {"value": value, "devices": list(devices)}


@dataclass
class ControlWriter:
    path: Path
    knobs: dict[str, object] = field(default_factory=dict)

    def set(self, **knobs: object) -> None:
        """Replace all knobs."""
        self.knobs = dict(knobs)
        self._write()

    def update(self, **knobs: object) -> None:
        """Change some knobs; a value of None removes the knob."""
        for key, value in knobs.items():
            if value is None:
                self.knobs.pop(key, None)
            else:
                self.knobs[key] = value
        self._write()

    def clear(self) -> None:
        self.set()

    def _write(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.knobs))
        os.replace(partial, self.path)


@dataclass
class RunningSimulator:
    root: Path
    configfs: Path
    sysfs: Path
    blob_store: Path
    tools_dir: Path
    state_dir: Path
    control: ControlWriter
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def hba_dir(self) -> Path:
        return self.configfs / "target/core" / HBA

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def loop_devices(self) -> list[str]:
        """Loop devices still bound that this simulator bound (its journal says which)."""
        ours = loopdev.journal_backing_files(self.state_dir / LOOP_JOURNAL)
        prefix = str(self.root) + "/"
        return sorted(
            device
            for device, backing in loopdev.backing_files().items()
            if backing in ours or backing.startswith(prefix)
        )

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (killed: negative)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def simulator_command(
    root: Path, *, open_latency: float = 0.0, appear_delay: float = 0.0, log_level: str = "INFO"
) -> list[str]:
    return [
        sys.executable, "-m", "tcmusim", "run",
        "--configfs", str(root / "configfs"),
        "--sysfs", str(root / "sysfs"),
        "--blob-store", str(root / "blobs"),
        "--control", str(root / "control.json"),
        "--state-dir", str(root / "state"),
        "--ready-file", str(root / "ready"),
        "--open-latency", str(open_latency),
        "--appear-delay", str(appear_delay),
        "--log-level", log_level,
    ]  # fmt: skip


@contextlib.contextmanager
def running_simulator(
    tmpdir: Path,
    *,
    open_latency: float = 0.0,
    appear_delay: float = 0.0,
    ready_timeout: float = 30.0,
    log_level: str = "INFO",
    **knobs: object,
) -> Iterator[RunningSimulator]:
    """``log_level`` WARNING keeps the log to faults and failures: what benchmarks use, so
    that the simulator's CPU is its kernel work, not a log line per configfs operation."""
    root = Path(tmpdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    control = ControlWriter(root / "control.json")
    control.set(**knobs)
    tools_dir = root / "tools"
    tools.install(tools_dir, blob_store=root / "blobs")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    log_path = root / "simulator.log"
    (root / "ready").unlink(missing_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            simulator_command(
                root, open_latency=open_latency, appear_delay=appear_delay, log_level=log_level
            ),
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    sim = RunningSimulator(
        root=root,
        configfs=root / "configfs",
        sysfs=root / "sysfs",
        blob_store=root / "blobs",
        tools_dir=tools_dir,
        state_dir=root / "state",
        control=control,
        log_path=log_path,
        process=process,
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while not (root / "ready").exists():
            if process.poll() is not None:
                raise RuntimeError(f"the simulator exited with {process.returncode}:\n{sim.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator was not ready in {ready_timeout}s:\n{sim.log()}")
            time.sleep(0.02)
        yield sim
    finally:
        status = sim.stop()
        if status != 0:
            emergency_cleanup(root, sim.loop_devices())


def emergency_cleanup(root: Path, devices: list[str]) -> None:
    """After a killed simulator: unmount what is mounted under ``root``, free its loops."""
    for mountpoint in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
    for device in devices:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            mountpoint = fields[4].replace("\\040", " ")
            if mountpoint.startswith(prefix):
                found.append(mountpoint)
    return found
