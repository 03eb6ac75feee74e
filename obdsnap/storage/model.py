"""The metadata records of snapshots, as containerd's snapshots package defines them."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeAlias


class Kind(enum.IntEnum):
    """Values match the wire enum containerd.services.snapshots.v1.Kind."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def label(self) -> str:
        """The word containerd's filters use for this kind."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Usage:
    size: int = 0
    inodes: int = 0


@dataclass(frozen=True, slots=True)
class Info:
    """What Stat, List and Update answer about a snapshot.

    Timestamps are nanoseconds since the Unix epoch (UTC), the precision Go's
    snapshotters store; ``created_at``/``updated_at`` give them as datetimes,
    which hold microseconds only.
    """

    name: str
    parent: str
    kind: Kind
    labels: Mapping[str, str] = field(default_factory=dict)
    created_ns: int = field(default_factory=lambda: now_ns())
    updated_ns: int = field(default_factory=lambda: now_ns())

    @property
    def created_at(self) -> datetime:
        return from_unix_nanos(self.created_ns)

    @property
    def updated_at(self) -> datetime:
        return from_unix_nanos(self.updated_ns)


@dataclass(frozen=True, slots=True)
class Record:
    """One snapshot as stored: its info plus the internal ID, recorded usage and rw mode.

    ``rw_mode`` is how the snapshot's rootfs was set up when it was created
    ("overlayfs", "dir" or "dev"; "" where it does not apply), so that Mounts
    answers what Prepare answered even if the boot config changed since.
    ``ready`` is False while a Prepare still sets up what the snapshot needs
    (devices, configs): a crash then leaves a row that start-up rolls back.
    """

    id: int
    info: Info
    usage: Usage = Usage()
    rw_mode: str = ""
    ready: bool = True

    @property
    def key(self) -> str:
        return self.info.name

    @property
    def kind(self) -> Kind:
        return self.info.kind

    @property
    def parent(self) -> str:
        return self.info.parent


class Operation(enum.Enum):
    """A multi-step operation on a snapshot's device or layer files, recorded as an intent."""

    ATTACH = "attach"  # configfs -> loopback -> disk -> mkfs -> mount -> mark
    DETACH = "detach"  # flush -> unmount -> configfs teardown -> mark removed
    COMMIT = "commit"  # detach -> overlaybd-commit -> layer config -> row committed


@dataclass(frozen=True, slots=True)
class Intent:
    """An operation that has started and not yet ended.

    It is durable before the operation's first step and cleared after its last, so
    an intent found at start-up names an operation a crash cut short. (A create's
    intent is the row's own ``ready`` flag: the row and its intent are one write.)
    """

    snapshot_id: int
    operation: Operation
    started_at: datetime


def now_ns() -> int:
    """Now, in nanoseconds since the Unix epoch (Go's time.Now() has them too)."""
    return time.time_ns()


# What a store reads the time from: now_ns, or a test's clock.
Clock: TypeAlias = Callable[[], int]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def unix_nanos(moment: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def from_unix_nanos(nanos: int) -> datetime:
    """The UTC datetime of a nanosecond timestamp, truncated to microseconds."""
    return _EPOCH + timedelta(microseconds=nanos // 1_000)
