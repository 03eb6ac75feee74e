"""Tests of obdsnap.role: every role of a snapshot, and DESIGN §5's writable mode rules."""

from __future__ import annotations

import pytest

from obdsnap import labels as L
from obdsnap.role import (
    AccelerationUnpack,
    BlockRootfs,
    CommittedLayer,
    DockerContainer,
    DockerInit,
    DockerLineage,
    OverlayRootfs,
    ParentLayer,
    PlainUnpack,
    RemoteUnpack,
    Role,
    RwMode,
    StorageType,
    TraceFlags,
    WritableRootfs,
    client_key,
    commits_local_layer,
    committed_role,
    device_is_mounted,
    has_own_device,
    is_acceleration_unpack,
    is_docker_init_key,
    is_docker_init_parent,
    is_remote_layer,
    is_unpack,
    new_rw_mode,
    ready_at_create,
    role_of,
)

REMOTE = {
    L.TARGET_SNAPSHOT_REF: "sha256:chain",
    L.BLOB_DIGEST: "sha256:blob",
    L.BLOB_SIZE: "123",
    L.IMAGE_REF: "docker.io/library/redis:7",
}
ACCELERATION = {L.TARGET_SNAPSHOT_REF: "sha256:accel", L.ACCELERATION_LAYER: "yes"}
PLAIN_PARENT = ParentLayer({}, StorageType.NORMAL)
LOCAL_PARENT = ParentLayer({}, StorageType.LOCAL_BLOCK)
REMOTE_PARENT = ParentLayer({L.REMOTE: L.REMOTE_VALUE}, StorageType.REMOTE_BLOCK)
ACCELERATION_PARENT = ParentLayer({L.ACCELERATION_LAYER: "yes"}, StorageType.LOCAL_BLOCK)
TRACE = {L.RECORD_TRACE: "yes", L.RECORD_TRACE_PATH: "/var/trace/c1"}


@pytest.mark.parametrize(
    ("key", "labels", "unpack"),
    [
        ("extract-123 sha256:abc", {}, True),
        ("default/42/extract-123 sha256:abc", {}, True),
        ("k8s.io/7/extract-1 sha256:abc", {}, True),
        ("mycontainer", {L.TARGET_SNAPSHOT_REF: "sha256:abc"}, True),
        ("default/42/mycontainer", {}, False),
        ("default/x/extract-1", {}, False),
        ("my-extract-1", {}, False),
    ],
)
def test_is_unpack(key: str, labels: dict[str, str], unpack: bool) -> None:
    assert is_unpack(key, labels) is unpack


def test_acceleration_unpack_needs_the_target_ref() -> None:
    assert is_acceleration_unpack({L.TARGET_SNAPSHOT_REF: "x", L.ACCELERATION_LAYER: "yes"})
    assert not is_acceleration_unpack({L.ACCELERATION_LAYER: "yes"})
    assert not is_acceleration_unpack({L.TARGET_SNAPSHOT_REF: "x", L.ACCELERATION_LAYER: "no"})


@pytest.mark.parametrize(
    "missing", [L.TARGET_SNAPSHOT_REF, L.BLOB_DIGEST, L.BLOB_SIZE, L.IMAGE_REF]
)
def test_a_remote_layer_needs_every_label(missing: str) -> None:
    assert is_remote_layer(REMOTE)
    assert not is_remote_layer({k: v for k, v in REMOTE.items() if k != missing})


def test_the_cri_image_ref_names_a_remote_layer_too() -> None:
    labels = {**REMOTE, L.CRI_IMAGE_REF: REMOTE[L.IMAGE_REF]}
    del labels[L.IMAGE_REF]
    assert is_remote_layer(labels)


# ---------------------------------------------------------------------- DESIGN §5


@pytest.mark.parametrize("default", list(RwMode))
@pytest.mark.parametrize("label", [None, "dir", "dev", "overlayfs", "rw"])
def test_plain_parent_always_gives_overlayfs(default: RwMode, label: str | None) -> None:
    labels = {} if label is None else {L.WRITABLE: label}
    assert new_rw_mode("c1", labels, PLAIN_PARENT, default) is RwMode.OVERLAYFS


@pytest.mark.parametrize(
    "parent", [None, LOCAL_PARENT, REMOTE_PARENT], ids=["none", "local", "remote"]
)
@pytest.mark.parametrize(
    ("label", "default", "expected"),
    [
        ("dir", RwMode.OVERLAYFS, RwMode.DIR),
        ("dev", RwMode.DIR, RwMode.DEV),
        ("overlayfs", RwMode.DIR, RwMode.OVERLAYFS),
        ("rw", RwMode.DEV, RwMode.OVERLAYFS),  # any other value: overlayfs, not the default
        ("", RwMode.DIR, RwMode.OVERLAYFS),
        (None, RwMode.DIR, RwMode.DIR),  # no label: the boot config's
        (None, RwMode.DEV, RwMode.DEV),
        (None, RwMode.OVERLAYFS, RwMode.OVERLAYFS),
    ],
)
def test_block_parent_or_none_label_then_boot_config(
    parent: ParentLayer | None, label: str | None, default: RwMode, expected: RwMode
) -> None:
    labels = {} if label is None else {L.WRITABLE: label}
    assert new_rw_mode("c1", labels, parent, default) is expected


@pytest.mark.parametrize("parent", [None, LOCAL_PARENT, PLAIN_PARENT])
def test_an_unpack_is_never_writable(parent: ParentLayer | None) -> None:
    assert new_rw_mode("extract-1 sha256:x", {L.WRITABLE: "dir"}, parent, RwMode.DEV) is (
        RwMode.OVERLAYFS
    )
    labels = {L.TARGET_SNAPSHOT_REF: "sha256:x", L.WRITABLE: "dev"}
    assert new_rw_mode("k", labels, parent, RwMode.DIR) is RwMode.OVERLAYFS


def test_stored_modes() -> None:
    assert RwMode.stored("") is RwMode.OVERLAYFS
    assert [RwMode.stored(mode.value) for mode in RwMode] == list(RwMode)
    assert [mode.writable for mode in RwMode] == [False, True, True]


# ---------------------------------------------------------------------- roles


def new_role(
    key: str,
    labels: dict[str, str],
    parent: ParentLayer | None,
    default: RwMode = RwMode.OVERLAYFS,
) -> Role:
    return role_of(key, labels, new_rw_mode(key, labels, parent, default), parent)


@pytest.mark.parametrize("parent", [None, PLAIN_PARENT, LOCAL_PARENT])
def test_plain_unpack(parent: ParentLayer | None) -> None:
    role = new_role("extract-1 sha256:x", {}, parent, RwMode.DIR)
    assert role == PlainUnpack()
    assert ready_at_create(role)
    assert not has_own_device(role)


@pytest.mark.parametrize(
    ("parent", "block_parent"),
    [(LOCAL_PARENT, True), (REMOTE_PARENT, True), (PLAIN_PARENT, False), (None, False)],
)
def test_acceleration_unpack(parent: ParentLayer | None, block_parent: bool) -> None:
    role = new_role("extract-1 sha256:accel", ACCELERATION, parent, RwMode.DIR)
    assert role == AccelerationUnpack(block_parent=block_parent)
    assert not ready_at_create(role)
    assert not has_own_device(role)


def test_remote_unpack_is_committed_under_its_target() -> None:
    role = new_role("extract-1 sha256:chain", REMOTE, REMOTE_PARENT, RwMode.DEV)
    assert role == RemoteUnpack(target="sha256:chain")
    assert not ready_at_create(role)


def test_remote_labels_with_acceleration_make_an_acceleration_unpack() -> None:
    labels = {**REMOTE, L.ACCELERATION_LAYER: "yes"}
    assert new_role("k", labels, LOCAL_PARENT) == AccelerationUnpack(block_parent=True)


@pytest.mark.parametrize("parent", [None, PLAIN_PARENT], ids=["none", "plain"])
@pytest.mark.parametrize("default", list(RwMode))
def test_overlay_rootfs(parent: ParentLayer | None, default: RwMode) -> None:
    labels = {L.WRITABLE: "overlayfs"} if parent is None else {L.WRITABLE: "dir"}
    role = new_role("c1", labels, parent, default)
    assert role == OverlayRootfs()
    assert ready_at_create(role)
    assert not has_own_device(role)


@pytest.mark.parametrize("parent", [LOCAL_PARENT, REMOTE_PARENT], ids=["local", "remote"])
def test_rootfs_on_a_block_parent(parent: ParentLayer) -> None:
    role = new_role("c1", {}, parent)
    assert role == BlockRootfs(trace=TraceFlags())
    assert ready_at_create(role)
    assert not has_own_device(role)  # the parent's device, not one of its own


def test_rootfs_on_an_acceleration_layer_prefetches_and_records_no_trace() -> None:
    role = new_role("c1", TRACE, ACCELERATION_PARENT)
    assert role == BlockRootfs(trace=TraceFlags(acceleration_layer=True))


@pytest.mark.parametrize(
    ("labels", "flags"),
    [
        (TRACE, TraceFlags(record_trace_path="/var/trace/c1")),
        ({L.RECORD_TRACE: "no", L.RECORD_TRACE_PATH: "/x"}, TraceFlags()),
        ({L.RECORD_TRACE: "yes"}, TraceFlags()),
    ],
)
def test_trace_recording_on_a_block_parent(labels: dict[str, str], flags: TraceFlags) -> None:
    assert new_role("c1", labels, LOCAL_PARENT) == BlockRootfs(trace=flags)


@pytest.mark.parametrize(("mode", "mounted"), [(RwMode.DIR, True), (RwMode.DEV, False)])
def test_writable_rootfs_on_a_block_parent(mode: RwMode, mounted: bool) -> None:
    role = new_role("c1", {L.WRITABLE: mode.value, **TRACE}, LOCAL_PARENT)
    assert role == WritableRootfs(
        mode=mode,
        block_parent=True,
        fresh_filesystem=False,
        trace=TraceFlags(record_trace_path="/var/trace/c1"),
        commits_layer_file=True,
    )
    assert not ready_at_create(role)
    assert has_own_device(role)
    assert device_is_mounted(role) is mounted


@pytest.mark.parametrize("mode", [RwMode.DIR, RwMode.DEV])
def test_writable_rootfs_without_parent_gets_a_fresh_filesystem(mode: RwMode) -> None:
    role = new_role("c1", {}, None, default=mode)
    assert role == WritableRootfs(
        mode=mode, block_parent=False, fresh_filesystem=True, trace=None, commits_layer_file=True
    )


def test_a_writable_acceleration_layer_commits_without_a_layer_file() -> None:
    role = new_role("c1", {L.WRITABLE: "dir", L.ACCELERATION_LAYER: "yes"}, LOCAL_PARENT)
    assert isinstance(role, WritableRootfs)
    assert not role.commits_layer_file


def test_the_kept_mode_decides_not_the_labels() -> None:
    """Mounts answers what Prepare did, even if the boot config changed since."""
    labels = {L.WRITABLE: "dir"}
    assert role_of("c1", labels, RwMode.OVERLAYFS, LOCAL_PARENT) == BlockRootfs(TraceFlags())
    kept = role_of("c1", {}, RwMode.DEV, LOCAL_PARENT)
    assert isinstance(kept, WritableRootfs)
    assert kept.mode is RwMode.DEV


@pytest.mark.parametrize(
    ("storage", "mode", "device", "local"),
    [
        (StorageType.NORMAL, RwMode.OVERLAYFS, False, False),
        (StorageType.LOCAL_BLOCK, RwMode.OVERLAYFS, True, True),
        (StorageType.REMOTE_BLOCK, RwMode.OVERLAYFS, True, False),
        (StorageType.LOCAL_BLOCK, RwMode.DEV, True, True),
        (StorageType.NORMAL, RwMode.DIR, True, False),  # committed from a writable rootfs
    ],
)
def test_committed_layers(storage: StorageType, mode: RwMode, device: bool, local: bool) -> None:
    role = committed_role(storage, mode)
    assert role == CommittedLayer(storage=storage, was_writable=mode.writable)
    assert has_own_device(role) is device
    assert device_is_mounted(role) is device  # a parent's device is always mounted read-only
    assert commits_local_layer(storage) is local
    assert storage.is_block is (storage is not StorageType.NORMAL)


# ---------------------------------------------------------------------- DESIGN-v1 §17


@pytest.mark.parametrize(
    ("key", "own"),
    [
        ("moby/12/c1-init-key", "c1-init-key"),
        ("k8s.io/3/a/b", "a/b"),  # a key the client chose may hold slashes
        ("c1-init", "c1-init"),
        ("moby/x/c1", "moby/x/c1"),  # not containerd's prefix: no number
    ],
)
def test_s17_client_key_drops_containerds_prefix(key: str, own: str) -> None:
    """DESIGN-v1 §17: keys are matched as the client chose them."""
    assert client_key(key) == own


@pytest.mark.parametrize(
    ("key", "init"),
    [
        ("moby/12/c1-init-key", True),  # what moby prepares
        ("moby/13/c1-init", True),  # what moby commits it as
        ("c1-init", True),
        ("random-init-random", True),  # quirk 13: any "-init-" qualifies, as in Go
        ("moby/14/c1", False),
        ("moby/14/c1-initial", False),
        ("c1init", False),
        ("", False),
        ("ci-init-ns/4/c1", False),  # the namespace is not part of the key moby chose
    ],
)
def test_s17_init_layer_keys(key: str, init: bool) -> None:
    """DESIGN-v1 §17 and §22 quirk 13: an init layer's key ends with -init or has -init-."""
    assert is_docker_init_key(key) is init


@pytest.mark.parametrize(
    ("parent", "container"),
    [
        ("moby/13/c1-init", True),
        ("c1-init", True),
        ("moby/12/c1-init-key", False),  # only a committed init layer is a parent
        ("sha256:abc", False),
        ("", False),
    ],
)
def test_s17_container_layer_parents(parent: str, container: bool) -> None:
    """DESIGN-v1 §17: a container layer's parent key ends with -init."""
    assert is_docker_init_parent(parent) is container


DOCKER = DockerLineage("", None)


def docker_role(
    key: str, parent_key: str, parent: ParentLayer | None, image_top: ParentLayer | None = None
) -> Role:
    lineage = DockerLineage(parent_key, image_top)
    return role_of(key, {}, new_rw_mode(key, {}, parent, RwMode.OVERLAYFS), parent, lineage)


@pytest.mark.parametrize(
    ("parent", "block"),
    [(REMOTE_PARENT, True), (LOCAL_PARENT, True), (PLAIN_PARENT, False), (None, False)],
)
def test_s17_init_layer_role(parent: ParentLayer | None, block: bool) -> None:
    """DESIGN-v1 §17: an init layer attaches its parent's device when that is a block layer."""
    role = docker_role("moby/5/c1-init-key", "sha256:top", parent)
    assert role == DockerInit(block_parent=block)
    assert ready_at_create(role)
    assert not has_own_device(role)


@pytest.mark.parametrize(
    ("image_top", "block"),
    [(REMOTE_PARENT, True), (LOCAL_PARENT, True), (PLAIN_PARENT, False), (None, False)],
)
def test_s17_container_layer_role(image_top: ParentLayer | None, block: bool) -> None:
    """DESIGN-v1 §17: a container layer on an init layer; the image top's type decides."""
    role = docker_role("moby/7/c1", "moby/6/c1-init", PLAIN_PARENT, image_top)
    assert role == DockerContainer(block_image=block)
    assert not has_own_device(role)


def test_s17_docker_mode_off_keeps_the_usual_roles() -> None:
    """DESIGN-v1 §17: without Docker mode, init and container layers are plain rootfs."""
    assert role_of("c1-init-key", {}, RwMode.OVERLAYFS, REMOTE_PARENT) == BlockRootfs(TraceFlags())
    assert role_of("c1", {}, RwMode.OVERLAYFS, PLAIN_PARENT) == OverlayRootfs()


def test_s17_unpacks_and_writable_rootfs_come_before_docker_layers() -> None:
    """DESIGN-v1 §6: unpack (step 2) and writable mode (step 3) before Docker mode (step 4)."""
    unpack = role_of("extract-1 sha256:x-init-y", {}, RwMode.OVERLAYFS, None, DOCKER)
    assert unpack == PlainUnpack()
    writable = role_of("c1-init-key", {}, RwMode.DIR, REMOTE_PARENT, DOCKER)
    assert isinstance(writable, WritableRootfs)


def test_s17_other_keys_in_docker_mode_keep_the_usual_roles() -> None:
    """DESIGN-v1 §17: a key that is neither init nor on an init layer is not Docker's."""
    lineage = DockerLineage("sha256:top", None)
    assert role_of("c1", {}, RwMode.OVERLAYFS, REMOTE_PARENT, lineage) == BlockRootfs(TraceFlags())
    assert role_of("c1", {}, RwMode.OVERLAYFS, None, DOCKER) == OverlayRootfs()
