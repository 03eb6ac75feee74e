"""Rootfs disk quota (DESIGN-v1 §16): a project quota on a new rootfs's ``fs/`` and ``work/``.

The node's own tools do the work, as in Go: ``lsattr -p`` reads a directory's
project ID, ``chattr -p`` sets it, ``setquota -P`` sets the project's limit on
the mount; whether the mount has project quota comes from its super options
in mountinfo. Where the tools live and which mountinfo is read are config keys
(``quotaToolDir``, ``quotaMountinfo``): every node runs the same steps, only
the commands and the file can be others.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from grpclib.const import Status

from obdsnap import labels as L
from obdsnap.blocking import BlockingRunner
from obdsnap.commands import CommandError, CommandTimedOut
from obdsnap.config import DEFAULT_QUOTA_PROJECT_ID, BootConfig
from obdsnap.errors import FailedPrecondition, InvalidArgument, SnapshotError, StepFailed
from obdsnap.layout import Layout
from obdsnap.mountinfo import MOUNTINFO, MountEntry, read_mounts
from obdsnap.role import is_rootfs
from obdsnap.sizes import ram_in_bytes

TOOL_TIME_LIMIT_S = 60.0
PRJQUOTA = "prjquota"
# What Go skips without an error: the quota is for directories (and files) only.
_SKIPPED_TYPES = (stat.S_ISLNK, stat.S_ISFIFO, stat.S_ISSOCK, stat.S_ISBLK, stat.S_ISCHR)


@dataclass(frozen=True)
class QuotaSettings:
    default_size: str = ""  # rootfsQuota: "" = no quota unless a snapshot's label asks
    project_id: int = DEFAULT_QUOTA_PROJECT_ID  # quotaProjectId (DESIGN-v1 §22 quirk 10)
    tool_dir: str = ""  # quotaToolDir: lsattr, chattr, setquota; "" = found on PATH
    mountinfo: Path = MOUNTINFO  # quotaMountinfo: where the mount's options are read
    time_limit_s: float = TOOL_TIME_LIMIT_S

    @classmethod
    def from_config(cls, config: BootConfig) -> QuotaSettings:
        return cls(
            default_size=config.rootfs_quota,
            project_id=config.quota_project_id,
            tool_dir=config.quota_tool_dir,
            mountinfo=Path(config.quota_mountinfo),
        )


NO_QUOTA_CONFIG = QuotaSettings()  # defaults: no size unless a label asks, tools on PATH


class QuotaError(SnapshotError):
    """A quota step failed; keeps the code of the step's own error."""

    def __init__(self, message: str, status: Status) -> None:
        super().__init__(message)
        self.status = status


def quota_size(key: str, labels: Mapping[str, str], default: str) -> str:
    """The quota a new snapshot gets: its label's, else the config's; "" = none.

    Only a rootfs (or a view) gets one; a label that is present but empty means none.
    """
    if not is_rootfs(key, labels):
        return ""
    return labels.get(L.DISK_QUOTA, default)


def check_quota_label(key: str, labels: Mapping[str, str]) -> None:
    """Prepare's check, before any side effect: a quota label that applies must parse."""
    size = labels.get(L.DISK_QUOTA, "")
    if size and is_rootfs(key, labels):
        try:
            quota_bytes(size)
        except InvalidArgument as exc:
            raise InvalidArgument(f"label {L.DISK_QUOTA}: {exc}") from None


def quota_bytes(size: str) -> int:
    """The quota in bytes; a size that does not parse is the caller's mistake."""
    try:
        return ram_in_bytes(size)
    except ValueError as exc:
        raise InvalidArgument(f"failed to change size: ({size}) to kilobytes: {exc}") from None


def project_of(listing: str, path: str) -> int:
    """The project ID ``lsattr -p`` lists for ``path`` (0 when it is not listed)."""
    for line in listing.splitlines():
        fields = line.split(maxsplit=2)
        if len(fields) == 3 and fields[2] == path:
            try:
                return int(fields[0])
            except ValueError:
                raise StepFailed(f"lsattr: no project ID in {line!r}") from None
    return 0


def containing_mount(path: str, mounts: list[MountEntry]) -> MountEntry | None:
    """The mount that holds ``path``: the longest mount point above it, the topmost one."""
    found: MountEntry | None = None
    for entry in mounts:
        top = entry.mount_point.rstrip("/") + "/"
        inside = path == entry.mount_point or path.startswith(top)
        if inside and (found is None or len(entry.mount_point) >= len(found.mount_point)):
            found = entry
    return found


def skipped(mode: int) -> bool:
    """Symlinks, pipes, sockets and devices get no quota, and no error either (as in Go)."""
    return any(is_type(mode) for is_type in _SKIPPED_TYPES)


class DiskQuota:
    """Sets the quota of new rootfs snapshots, in their ``new-*`` directory before the rename."""

    def __init__(self, settings: QuotaSettings, blocking: BlockingRunner) -> None:
        self._settings = settings
        self._blocking = blocking

    async def set_on(
        self,
        new_dir: Path,
        snapshot_id: int,
        key: str,
        labels: Mapping[str, str],
        *,
        work: bool,
    ) -> None:
        """``fs/``, then ``work/`` when ``work`` (an active snapshot with a parent).

        Views never get ``work/`` (DESIGN-v1 §22 quirk 10: Go fails them instead).
        """
        size = quota_size(key, labels, self._settings.default_size)
        if not size:
            return
        targets = [("upperpath", Layout.fs_in(new_dir))]
        if work:
            targets.append(("workpath", Layout.work_in(new_dir)))
        for name, directory in targets:
            context = f"failed to set diskquota on {name}, snapshot id: {snapshot_id}"
            try:
                await self._blocking(self.set_quota, directory, size)
            except SnapshotError as exc:
                raise QuotaError(f"{context}: {exc}", exc.status).add_context(
                    snapshot_id=snapshot_id, step=exc.step or "quota", reason=exc.reason
                ) from exc
            except OSError as exc:
                raise StepFailed(f"{context}: {exc}").add_context(
                    snapshot_id=snapshot_id, step="quota", reason=exc.strerror or ""
                ) from exc

    def set_quota(self, directory: Path, size: str) -> None:
        """Blocking: DESIGN-v1 §16 steps 1-6 on one directory."""
        try:
            mode = os.lstat(directory).st_mode
        except OSError as exc:
            raise StepFailed(f"lstat {directory}: {exc.strerror}") from exc
        if skipped(mode):
            return
        project = str(self._settings.project_id)
        current = project_of(self._run("lsattr", "-p", str(directory.parent)), str(directory))
        if current not in (0, self._settings.project_id):
            raise FailedPrecondition(f"quota id is already set, quota id: {current}")
        mount_point = self._prjquota_mount(directory)
        limit = quota_bytes(size)
        fs = os.statvfs(mount_point)
        if limit > fs.f_blocks * fs.f_bsize:
            raise FailedPrecondition(
                f"dir {mount_point} quota limit {limit} must be less than "
                f"{fs.f_blocks * fs.f_bsize}"
            )
        self._run("chattr", "-p", project, "+P", str(directory))
        self._run("setquota", "-P", project, "0", str(limit // 1024), "0", "0", mount_point)

    def _prjquota_mount(self, directory: Path) -> str:
        """The mount point holding ``directory``, which must have project quota on.

        A node that is not set up for quota is refused with FAILED_PRECONDITION, not
        Go's UNKNOWN: the call cannot succeed until the operator changes the node,
        which is what that code says (tool failures stay UNKNOWN, as in Go).
        """
        path = os.path.realpath(directory)
        entry = containing_mount(path, read_mounts(self._settings.mountinfo))
        if entry is None:
            raise FailedPrecondition(f"no mount holds {path} in {self._settings.mountinfo}")
        if PRJQUOTA not in entry.super_options.split(","):
            raise FailedPrecondition(f"mountpoint: ({entry.mount_point}) not enable prjquota")
        return entry.mount_point

    def _run(self, tool: str, *args: str) -> str:
        """Blocking: the tool's stdout, or CommandError with its stderr."""
        program = str(Path(self._settings.tool_dir) / tool) if self._settings.tool_dir else tool
        argv = (program, *args)
        limit = self._settings.time_limit_s
        try:
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=limit, check=False
            )
        except subprocess.TimeoutExpired:
            raise CommandTimedOut(
                argv, f"{program} did not finish within {limit:.0f}s", "timed out"
            ) from None
        except OSError as exc:
            message = f"cannot run {program}: {exc.strerror}"
            raise CommandError(argv, message, str(exc.strerror)) from exc
        if done.returncode != 0:
            output = (done.stderr or done.stdout).decode(errors="replace").strip()
            message = f"{' '.join(argv)} failed (exit {done.returncode}): {output}"
            raise CommandError(argv, message, output)
        return done.stdout.decode(errors="replace")
