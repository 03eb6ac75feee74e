"""`obdsnap health`: one real RPC against a running obdsnap, for probes and people."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status

from obdsnap.genproto.containerd.services.snapshots import v1 as api

# No snapshot has this key: a serving snapshotter answers NOT_FOUND from memory.
PROBE_KEY = "obdsnap-health-probe"
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Health:
    healthy: bool
    address: str
    detail: str
    seconds: float

    def line(self) -> str:
        state = "serving" if self.healthy else "not serving"
        return f"{self.address}: {state}: {self.detail} ({self.seconds * 1000:.1f} ms)"


async def check_health(address: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Health:
    """Stat a key that does not exist: NOT_FOUND (or any answer of the service) is healthy."""
    start = time.monotonic()
    channel = Channel(path=address)
    try:
        async with asyncio.timeout(timeout_s):
            await api.SnapshotsStub(channel).stat(api.StatSnapshotRequest(key=PROBE_KEY))
        healthy, detail = True, "Stat answered"
    except GRPCError as exc:
        healthy = exc.status is not Status.UNAVAILABLE
        detail = f"Stat answered {exc.status.name}" + ("" if healthy else f": {exc.message}")
    except TimeoutError:
        healthy, detail = False, f"no answer within {timeout_s:g}s"
    except OSError as exc:
        healthy, detail = False, f"cannot connect: {exc.strerror or exc}"
    except Exception as exc:  # a peer that is not a gRPC server, a broken connection...
        healthy, detail = False, f"{type(exc).__name__}: {exc}"
    finally:
        channel.close()
    return Health(healthy, address, detail, time.monotonic() - start)
