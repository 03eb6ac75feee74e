"""Remove's device steps (DESIGN-v1 §9).

Remove detaches a snapshot's own device, then refuses a snapshot whose
``block/mountpoint`` is still mounted, and only then (``autoRemoveDev``) lets
the parent's device go, unless another snapshot still uses it: the parent-in-use
guard. Docker mode's Remove of an init layer uses the same guard for the image
top's device, counting more children as users.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from obdsnap.blocking import BlockingRunner
from obdsnap.device.manager import DeviceManager
from obdsnap.device.mounter import Mounter
from obdsnap.errors import FailedPrecondition
from obdsnap.layout import Layout
from obdsnap.role import Role, device_is_mounted, has_own_device
from obdsnap.storage import Kind, MetaStore, Record

log = logging.getLogger(__name__)

UserPredicate = Callable[[Record], bool]
"""Whether a child of a parent counts as a user of the parent's device besides the live ones."""


def no_other_users(child: Record) -> bool:
    """The guard's default: only active and view children keep the parent's device."""
    return False


def is_device_user(child: Record, exclude: str, also_user: UserPredicate = no_other_users) -> bool:
    """DESIGN-v1 §9 guard: whether ``child`` keeps its parent's device attached.

    An active or view snapshot does; a committed one does not, unless ``also_user``
    says so. ``exclude`` is the snapshot being removed: never a user.
    """
    if child.key == exclude:
        return False
    return child.kind in (Kind.ACTIVE, Kind.VIEW) or also_user(child)


class DeviceRelease:
    """Letting devices go on Remove, as far as nothing uses them any more."""

    def __init__(
        self,
        layout: Layout,
        store: MetaStore,
        devices: DeviceManager,
        mounter: Mounter,
        blocking: BlockingRunner,
    ) -> None:
        self._layout = layout
        self._store = store
        self._devices = devices
        self._mounter = mounter
        self._blocking = blocking

    async def detach_unless_busy(self, record: Record, role: Role) -> None:
        """Detach the snapshot's own device, unless an overlay mount still uses its mountpoint."""
        if not has_own_device(role) or not await self._devices.is_marked(record.id):
            return
        if device_is_mounted(role) and await self._blocking(
            self._mounter.overlay_uses, self._layout.block(record.id).mountpoint
        ):
            log.info("snapshot %r: device still used by an overlay mount; kept", record.key)
            return
        await self._devices.detach(record.id)

    async def release_parent_device(
        self,
        parent: Record,
        parent_role: Role,
        *,
        exclude: str,
        also_user: UserPredicate = no_other_users,
    ) -> None:
        """Detach ``parent``'s device unless a child other than ``exclude`` uses it (§9 guard).

        The caller holds the locks of ``exclude``'s snapshot and of ``parent``.
        """
        users = [
            child.key
            for child in self._store.children(parent.key)
            if is_device_user(child, exclude, also_user)
        ]
        if users:
            log.info(
                "snapshot %r: device is parent to someone else, ignore umount (used by %s)",
                parent.key,
                ", ".join(repr(user) for user in sorted(users)),
            )
            return
        await self.detach_unless_busy(parent, parent_role)

    async def refuse_if_mounted(self, record: Record) -> None:
        """DESIGN-v1 §9 step 5: a snapshot whose mountpoint is still a mount point stays."""
        mountpoint = self._layout.block(record.id).mountpoint
        if await self._blocking(self._mounter.is_mounted, mountpoint):
            raise FailedPrecondition(
                f"try to remove snapshot {record.id} which still have mountpoint"
            ).add_context(snapshot_id=record.id, step="remove")
