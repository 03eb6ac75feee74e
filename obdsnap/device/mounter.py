"""What obdsnap does to the host's filesystems: mkfs, mount, unmount, flush, and the mount table.

One seam, so that a test can run the snapshotter in-process without root; the
mount-table queries are blocking (run them on the BlockingRunner), the rest are
async commands.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from obdsnap import mountinfo
from obdsnap.commands import CommandError, CommandTimedOut
from obdsnap.device import filesystem
from obdsnap.device.filesystem import FsSpec

log = logging.getLogger(__name__)

# A disk that just appeared may still be held by a prober (udev, blkid): mount again.
MOUNT_ATTEMPTS = 50
MOUNT_RETRY_INTERVAL_S = 0.01


class Mounter(Protocol):
    def mounted_source(self, path: Path) -> str | None:
        """Blocking: the source of what is mounted on ``path`` (the topmost mount), if any."""
        ...

    def is_mounted(self, path: Path) -> bool:
        """Blocking: whether something is mounted exactly on ``path``."""
        ...

    def device_mounted_on(self, device: Path, path: Path) -> bool:
        """Blocking: whether the topmost mount on ``path`` is ``device``'s."""
        ...

    def mounts_under(self, path: Path) -> list[str]:
        """Blocking: mount points at or below ``path``."""
        ...

    def overlay_uses(self, path: Path) -> bool:
        """Blocking: whether an overlay mount names ``path`` in its options."""
        ...

    async def make_filesystem(self, device: Path, spec: FsSpec, *, mounted_rw_next: bool) -> None:
        """A fresh filesystem on ``device``, empty unless ``mounted_rw_next``: then the caller
        removes ext4's lost+found through the mount (filesystem.remove_lost_and_found)."""
        ...

    async def mount(
        self, device: Path, mountpoint: Path, spec: FsSpec, *, readonly: bool
    ) -> None: ...

    async def unmount(self, mountpoint: Path) -> None: ...

    async def flush(self, device: Path) -> None:
        """Write back the device's buffers and the filesystem on it, wherever it is mounted."""
        ...


class HostMounter:
    """The real thing: mkfs(8), mount(2), umount2(2), BLKFLSBUF and /proc/self/mountinfo."""

    def mounted_source(self, path: Path) -> str | None:
        return mountinfo.mounted_source(path)

    def is_mounted(self, path: Path) -> bool:
        return mountinfo.is_mounted(path)

    def device_mounted_on(self, device: Path, path: Path) -> bool:
        return mountinfo.device_mounted_on(device, path)

    def mounts_under(self, path: Path) -> list[str]:
        return mountinfo.mounts_under(path)

    def overlay_uses(self, path: Path) -> bool:
        return mountinfo.overlay_uses(path)

    async def make_filesystem(self, device: Path, spec: FsSpec, *, mounted_rw_next: bool) -> None:
        await filesystem.make_filesystem(device, spec)
        if not mounted_rw_next:
            # containerd expects a snapshot without parent to start empty.
            await filesystem.remove_lost_and_found_unmounted(device, spec)

    async def mount(self, device: Path, mountpoint: Path, spec: FsSpec, *, readonly: bool) -> None:
        """mount(2) (ntfs: mount(8)), tried 50 times 10 ms apart; the last failure is raised."""
        for attempt in range(1, MOUNT_ATTEMPTS + 1):
            try:
                await filesystem.mount_device(device, mountpoint, spec, readonly=readonly)
                return
            except CommandTimedOut:
                raise
            except CommandError as exc:
                if attempt == MOUNT_ATTEMPTS:
                    raise
                log.debug("mount of %s, attempt %d failed: %s", device, attempt, exc)
            await asyncio.sleep(MOUNT_RETRY_INTERVAL_S)

    async def unmount(self, mountpoint: Path) -> None:
        await filesystem.unmount(mountpoint)

    async def flush(self, device: Path) -> None:
        await filesystem.flush_device(device)
