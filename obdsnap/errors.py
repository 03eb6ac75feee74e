"""Error kinds of the snapshots API, each bound to the gRPC status containerd expects.

containerd's proxy client turns the status code back into its own error kind
(errdefs.FromGRPC), so the code is the contract; the message is for people.
A failure also carries, for the log, the snapshot ID and the step it happened
in and the reason the tool gave, where they are known.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from grpclib.const import Status


class SnapshotError(Exception):
    """Base of every error that is answered to the client with a specific code."""

    status: Status = Status.UNKNOWN
    snapshot_id: int | None = None
    step: str = ""  # e.g. "open", "mkfs", "mount", "overlaybd-commit"
    reason: str = ""  # what the failing tool said (overlaybd's result file, a command's output)

    def add_context(
        self, *, snapshot_id: int | None = None, step: str = "", reason: str = ""
    ) -> Self:
        """Fill in what is not known yet: the innermost, most precise, context wins."""
        if self.snapshot_id is None:
            self.snapshot_id = snapshot_id
        self.step = self.step or step
        self.reason = self.reason or reason
        return self


class NotFound(SnapshotError):
    status = Status.NOT_FOUND


class AlreadyExists(SnapshotError):
    status = Status.ALREADY_EXISTS


class InvalidArgument(SnapshotError):
    status = Status.INVALID_ARGUMENT


class FailedPrecondition(SnapshotError):
    status = Status.FAILED_PRECONDITION


class Unavailable(SnapshotError):
    status = Status.UNAVAILABLE


class Unimplemented(SnapshotError):
    status = Status.UNIMPLEMENTED


class StepFailed(SnapshotError):
    """An I/O error in a step of a device or layer operation."""


@contextmanager
def failure_context(*, snapshot_id: int | None = None, step: str = "") -> Iterator[None]:
    """Errors raised inside learn the snapshot and step they happened in.

    An OSError becomes a StepFailed that names the step, so it is logged and
    answered like every other failure of the operation.
    """
    try:
        yield
    except SnapshotError as exc:
        exc.add_context(snapshot_id=snapshot_id, step=step)
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StepFailed(f"{step or 'I/O'}: {exc}").add_context(
            snapshot_id=snapshot_id, step=step, reason=reason
        ) from exc
