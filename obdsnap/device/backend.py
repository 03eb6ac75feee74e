"""What the snapshotter needs from a device backend, and how attaching can fail."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Protocol

from grpclib.const import Status

from obdsnap.commands import CommandTimedOut
from obdsnap.errors import SnapshotError
from obdsnap.layout import BlockDir


class AttachError(SnapshotError):
    """The image could not be opened or the device set up; the message says why."""


class OpenFailed(AttachError):
    """overlaybd reported that it could not open the image (its result file says failed)."""


class DeviceTimeout(AttachError):
    """The device did not appear in time; trying again may work."""

    status = Status.UNAVAILABLE


class DeviceBackend(Protocol):
    """Block devices that open a snapshot's device config, one per snapshot ID.

    Ownership is a token: what the backend records on the device when it sets it
    up from a snapshot's block directory. A device whose token is not the
    snapshot's own was set up by someone else (another snapshotter on the host)
    and is never touched.
    """

    def describe(self, snapshot_id: int) -> str:
        """The snapshot's device as messages name it, e.g. ``device dev_12``."""
        ...

    async def attach(self, snapshot_id: int, block: BlockDir) -> Path:
        """Set up the snapshot's device from ``block``; the device node, ready for mkfs and
        mount. Undone on failure; a device that does not appear is a failure."""
        ...

    async def detach(self, snapshot_id: int) -> None:
        """Tear the device down; a device that is not there is fine."""
        ...

    async def is_attached(self, snapshot_id: int) -> bool:
        """Whether the snapshot's device is set up (false after a reboot or a detach)."""
        ...

    async def has_entries(self, snapshot_id: int) -> bool:
        """Whether anything of the snapshot's device is set up, even half of it."""
        ...

    async def find_device(self, snapshot_id: int) -> Path | None:
        """The device node of an attached snapshot, if its disk is there."""
        ...

    async def owner(self, snapshot_id: int) -> str | None:
        """The token of whoever set the device up; None if nothing, or no token yet."""
        ...

    def owner_token(self, block: BlockDir) -> str:
        """What ``owner`` answers for a device this backend set up from ``block``."""
        ...

    async def attached_ids(self) -> set[int]:
        """IDs of every snapshot with a device set up, known to the metadata or not."""
        ...


# Why an attach failed, in a few words an alert can name (obdsnap_attach_failures_total).
ATTACH_FAILURE_REASONS = ("open_failed", "timeout", "busy", "kernel")
_BUSY_ERRNOS = frozenset({errno.EBUSY, errno.EAGAIN})


def attach_failure_reason(error: BaseException) -> str:
    """The reason of ATTACH_FAILURE_REASONS that a failed attach's error falls under.

    ``open_failed``: overlaybd could not open the image (e.g. a missing or corrupt
    layer); ``timeout``: the disk did not appear, or a command ran out of time;
    ``busy``: the kernel still said EBUSY/EAGAIN after the retries; ``kernel``:
    any other configfs, sysfs, mkfs or mount failure.
    """
    if isinstance(error, OpenFailed):
        return "open_failed"
    if isinstance(error, DeviceTimeout | CommandTimedOut | TimeoutError):
        return "timeout"
    cause = error if isinstance(error, OSError) else error.__cause__
    if isinstance(cause, OSError) and cause.errno in _BUSY_ERRNOS:
        return "busy"
    return "kernel"
