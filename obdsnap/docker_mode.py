"""Docker runtime mode (DESIGN-v1 §17): moby's init layers and the container layers on them.

With the containerd image store, moby prepares ``<id>-init-key`` on the image's
top layer, writes its init files into it, commits it as ``<id>-init`` and
prepares the container ``<id>`` on that. The roles are role.py's; this module
finds the image top under a container and who still uses the image top's device.

Where obdsnap answers differently from Go: Mounts of an init layer answers the
bind its Prepare did (Go's answers an overlay), and brings the image top's
device back; so does Mounts of a container layer (§22 quirk 11). Views are
read-only: an init layer's bind is ``ro``, and a view on an init layer is an
overlay of lowers only (Go hands a view an upper and work dir it never made).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from obdsnap.device.manager import DeviceManager, MountMode
from obdsnap.errors import SnapshotError
from obdsnap.overlaybd.fs_choice import DeviceFs
from obdsnap.overlaybd.layers import BlockLayers
from obdsnap.removal import UserPredicate, is_device_user, no_other_users
from obdsnap.role import (
    DockerContainer,
    DockerInit,
    DockerLineage,
    ParentLayer,
    Role,
    RwMode,
    committed_role,
    is_docker_init_key,
    is_docker_init_parent,
)
from obdsnap.storage import MetaStore, Record

log = logging.getLogger(__name__)


class DockerLayers:
    def __init__(
        self,
        store: MetaStore,
        layers: BlockLayers,
        devices: DeviceManager,
        fs: DeviceFs,
        *,
        enabled: bool,
    ) -> None:
        self._store = store
        self._layers = layers
        self._devices = devices
        self._fs = fs
        self.enabled = enabled  # runtimeType "docker" with rwMode "overlayfs"

    async def lineage(self, parent: Record | None) -> DockerLineage | None:
        """What role.py needs to tell Docker's layers; None outside Docker mode."""
        if not self.enabled:
            return None
        if parent is None:
            return DockerLineage("", None)
        image_top = self.image_top(parent)
        if image_top is None:
            return DockerLineage(parent.key, None)
        storage = await self._layers.storage_type(image_top)
        return DockerLineage(parent.key, ParentLayer(image_top.info.labels, storage))

    def image_top(self, init: Record | None) -> Record | None:
        """The image top under a container layer: the parent of its (committed) init layer."""
        if init is None or not init.parent or not is_docker_init_parent(init.key):
            return None
        return self._store.find(init.parent)

    async def attach_image(self, role: Role, parent: Record | None, *, new: bool) -> None:
        """Attach the image top's device, read-only and mounted, where the role needs it.

        The caller holds the locks of the snapshot and of the image top.
        """
        image_top = self.image_to_attach(role, parent, new=new)
        if image_top is None:
            return
        spec = await self._fs.spec(image_top)
        try:
            await self._devices.attach(image_top.id, spec, mkfs=False, mode=MountMode.READ_ONLY)
        except SnapshotError as exc:
            if isinstance(role, DockerInit):  # Go's message, with the same code
                exc.args = (f"failed to attach overlaybd for docker init layer: {exc}",)
            raise

    def image_to_attach(self, role: Role, parent: Record | None, *, new: bool) -> Record | None:
        """The block layer whose device the snapshot's mounts need attached, if any.

        An init layer attaches its parent, the image top. A container layer's
        Prepare attaches nothing, as Go's; its Mounts attach the image top again
        when a reboot or a restart took the device away (DESIGN-v1 §22 quirk 11).
        """
        match role:
            case DockerInit(block_parent=True):
                return parent
            case DockerContainer(block_image=True) if not new:
                return self.image_top(parent)
            case _:
                return None

    def image_users(self, image_top: Record, excluded: str) -> list[str]:
        """Keys that keep the image top's device, ``excluded`` aside: its active and view
        children, and its init layers, committed ones too: a stopped container starts
        again on its init layer (DESIGN-v1 §22 quirk 11)."""
        return [
            child.key
            for child in self._store.children(image_top.key)
            if is_device_user(child, excluded, also_user=is_init_layer)
        ]

    async def release_image(
        self,
        removed: Record,
        image_top: Record | None,
        detach: Callable[[Record, Role], Awaitable[None]],
    ) -> None:
        """Removing an init layer detaches its parent's, the image top's, device with its
        last user (DESIGN-v1 §9 step 3); a failure is only logged: the init layer goes anyway.
        """
        if not self.enabled or image_top is None or not is_docker_init_key(removed.key):
            return
        users = self.image_users(image_top, removed.key)
        if users:
            log.info("snapshot %r: device kept for %s", image_top.key, ", ".join(users))
            return
        try:
            storage = await self._layers.storage_type(image_top)
            await detach(image_top, committed_role(storage, RwMode.stored(image_top.rw_mode)))
        except SnapshotError as exc:
            log.warning("snapshot %r: detaching the image's device failed: %s", image_top.key, exc)

    @property
    def extra_users(self) -> UserPredicate:
        """Who else keeps an image device attached: in Docker mode, every init layer."""
        return is_init_layer if self.enabled else no_other_users


def is_init_layer(child: Record) -> bool:
    """Docker's init layers, committed ones too, keep the image top's device (§22 quirk 11)."""
    return is_docker_init_key(child.key)
