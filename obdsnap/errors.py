"""Error kinds of the snapshots API, each bound to the gRPC status containerd expects.

containerd's proxy client turns the status code back into its own error kind
(errdefs.FromGRPC), so the code is the contract; the message is for people.
"""

from grpclib.const import Status


class SnapshotError(Exception):
    """Base of every error that is answered to the client with a specific code."""

    status: Status = Status.UNKNOWN


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
