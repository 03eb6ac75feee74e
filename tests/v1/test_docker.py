"""DESIGN-v1 §17: Docker runtime mode, driven as moby's containerd image store drives it.

moby prepares ``<id>-init-key`` on the image's top layer, writes its init files
into the mounts it gets, commits that as ``<id>-init`` and prepares the
container ``<id>`` on it. containerd hands a proxy every key as
``<namespace>/<n>/<key>``; the keys here are written that way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from grpclib.const import Status
from support.block import Image, Obd
from support.block_fixtures import Images, StartObd
from support.mounts import mount_options
from support.simulator import MISSING
from support.snapshots import expect_status

from obdsnap.genproto.containerd.types import Mount
from tcmusim.testing import only

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

DOCKER = {"runtimeType": "docker"}
INIT_FILES = {"etc/hostname": "container one\n", ".dockerenv": ""}


def keys(name: str, n: int) -> tuple[str, str, str]:
    """The init layer's key, its committed name and the container's key, as containerd
    passes moby's ``<name>-init-key``, ``<name>-init`` and ``<name>``."""
    return f"moby/{n}/{name}-init-key", f"moby/{n + 1}/{name}-init", f"moby/{n + 2}/{name}"


async def docker_image(start_obd: StartObd, image: Image) -> tuple[Obd, str, int]:
    """obdsnap in Docker mode with ``image`` unpacked; its top layer's chain ID and ID."""
    obd = await start_obd(**DOCKER)
    top_chain, top = await obd.unpack_top(image)
    return obd, top_chain, top


def as_tuples(mounts: list[Mount]) -> list[tuple[str, str, list[str]]]:
    return [(m.type, m.source, list(m.options)) for m in mounts]


async def set_up_container(
    obd: Obd, image_top: str, name: str, n: int, tmp_path: Path
) -> tuple[int, list[Mount]]:
    """moby's PrepareSnapshot: the init layer with its files, committed, then the container.

    Returns the init layer's ID and the container's mounts.
    """
    init_key, init, container = keys(name, n)
    init_mounts = await obd.prepare(init_key, image_top)
    init_id = obd.id_of(init_mounts[0].source)
    assert as_tuples(init_mounts) == [("bind", str(obd.fs(init_id)), ["rw", "rbind"])]
    target = tmp_path / f"{name}-init"
    obd.mount_for_real(init_mounts[0], target)  # moby's mount.WithTempMount
    for file, content in INIT_FILES.items():
        (target / file).parent.mkdir(parents=True, exist_ok=True)
        (target / file).write_text(content)
    obd.umount_for_real(target)
    await obd.commit(init, init_key)
    return init_id, await obd.prepare(container, init)


def assert_container_overlay(obd: Obd, mounts: list[Mount], init_id: int, lowers: str) -> None:
    """An overlay with the container's own upper and work dirs on ``init/fs:lowers``."""
    assert len(mounts) == 1 and mounts[0].type == "overlay", mounts
    options = mount_options(mounts[0])
    own = obd.id_of(options["upperdir"])
    assert options["upperdir"] == str(obd.fs(own))
    assert options["workdir"] == str(obd.snapshot_dir(own) / "work")
    assert options["lowerdir"] == f"{obd.fs(init_id)}:{lowers}"


def assert_rootfs(root: Path) -> None:
    """The three-layer test image with the init files on top."""
    assert (root / "three.txt").read_text() == "layer 3\n"
    assert (root / "etc/os-release").read_text() == "layer3\n"
    assert (root / "bin/hello").read_text() == "hello from layer 1\n"
    assert not (root / "data/gone").exists()
    for file, content in INIT_FILES.items():
        assert (root / file).read_text() == content


async def test_s17_init_layer_attaches_the_image_and_the_container_sees_it(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §17: init layer = bind of its fs/ with the image top's device mounted
    read-only; container layer = overlay on init fs/ and the image top's mountpoint."""
    obd, top_chain, top = await docker_image(start_obd, images.three)
    init_key, init, container = keys("c1", 20)

    init_mounts = await obd.prepare(init_key, top_chain)
    obd.assert_attached(top, mounted="ro")
    init_id = obd.id_of(init_mounts[0].source)
    assert as_tuples(init_mounts) == [("bind", str(obd.fs(init_id)), ["rw", "rbind"])]
    # Mounts of the init key answers as its Prepare did.
    assert await obd.mounts(init_key) == init_mounts
    (obd.fs(init_id) / ".dockerenv").write_text("")
    await obd.commit(init, init_key)

    mounts = await obd.prepare(container, init)
    assert_container_overlay(obd, mounts, init_id, str(obd.mountpoint(top)))
    assert await obd.mounts(container) == mounts
    rootfs = tmp_path / "rootfs"
    obd.mount_for_real(mounts[0], rootfs)
    assert (rootfs / "three.txt").read_text() == "layer 3\n"
    assert (rootfs / "bin/hello").read_text() == "hello from layer 1\n"
    assert (rootfs / ".dockerenv").exists()
    (rootfs / "written-by-the-container").write_text("upper\n")
    obd.umount_for_real(rootfs)
    assert (obd.fs(obd.own_id(mounts)) / "written-by-the-container").read_text() == "upper\n"


async def test_s17_init_files_are_seen_through_the_container(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §17: the init layer's files sit above the image in the container's rootfs."""
    obd, top_chain, top = await docker_image(start_obd, images.three)
    init_id, mounts = await set_up_container(obd, top_chain, "c1", 20, tmp_path)
    assert_container_overlay(obd, mounts, init_id, str(obd.mountpoint(top)))
    rootfs = tmp_path / "rootfs"
    obd.mount_for_real(mounts[0], rootfs)
    assert_rootfs(rootfs)


@pytest.mark.parametrize("restart", ["sigkill", "sigterm"])
async def test_s22_quirk11_mounts_after_a_reboot_reattaches_the_image_device(
    start_obd: StartObd, images: Images, tmp_path: Path, restart: str
) -> None:
    """DESIGN-v1 §22 quirk 11: Mounts of a container layer re-attaches the image top's device
    (Go answers an overlay on an empty mountpoint)."""
    obd, top_chain, top = await docker_image(start_obd, images.three)
    _, mounts = await set_up_container(obd, top_chain, "c1", 20, tmp_path)

    await obd.restart(kill=restart == "sigkill")
    obd.detach_like_reboot(top)
    assert await obd.mounts(keys("c1", 20)[2]) == mounts
    obd.assert_attached(top, mounted="ro")
    rootfs = tmp_path / "rootfs"
    obd.mount_for_real(mounts[0], rootfs)
    assert_rootfs(rootfs)


async def test_s22_quirk11_mounts_of_an_init_key_reattaches_and_answers_its_bind(
    start_obd: StartObd, images: Images
) -> None:
    """DESIGN-v1 §22 quirk 11: Mounts of an active init layer answers its Prepare's bind and
    brings the image top's device back."""
    obd, top_chain, top = await docker_image(start_obd, images.single)
    init_key, _, _ = keys("c1", 20)
    init_mounts = await obd.prepare(init_key, top_chain)
    await obd.restart(kill=True)
    obd.detach_like_reboot(top)
    assert await obd.mounts(init_key) == init_mounts
    obd.assert_attached(top, mounted="ro")


async def test_s22_quirk11_committed_init_layers_keep_the_image_device(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §9 Remove step 3, §22 quirk 11: the image top's device goes with the last
    init layer, a stopped container's committed one included."""
    obd, top_chain, top = await docker_image(start_obd, images.three)
    init_one, _ = await set_up_container(obd, top_chain, "c1", 20, tmp_path)
    await set_up_container(obd, top_chain, "c2", 30, tmp_path)  # stopped: not mounted
    _, init, container = keys("c1", 20)
    device = obd.assert_attached(top, mounted="ro")

    await obd.remove(container)
    await obd.remove(init)
    assert obd.assert_attached(top, mounted="ro") == device
    await obd.wait_gone(init_one)
    # The stopped container starts again on its image.
    rootfs = tmp_path / "c2"
    obd.mount_for_real((await obd.mounts(keys("c2", 30)[2]))[0], rootfs)
    assert_rootfs(rootfs)
    obd.umount_for_real(rootfs)

    _, init, container = keys("c2", 30)
    await obd.remove(container)
    obd.assert_attached(top, mounted="ro")  # its init layer still is a user
    await obd.remove(init)
    obd.assert_detached(top)


@pytest.mark.parametrize("other_child", [False, True])
async def test_s17_remove_of_an_active_init_layer_detaches_an_unused_image_device(
    start_obd: StartObd, images: Images, other_child: bool
) -> None:
    """DESIGN-v1 §9 Remove step 3 and guard: moby giving up on an init layer detaches the
    image top, unless another active child of it still uses the device."""
    obd, top_chain, top = await docker_image(start_obd, images.single)
    init_key, _, _ = keys("c1", 20)
    await obd.prepare(init_key, top_chain)
    if other_child:
        await obd.prepare("moby/40/plain-container", top_chain)
    await obd.remove(init_key)
    if other_child:
        obd.assert_attached(top, mounted="ro")
        assert (obd.mountpoint(top) / "single.txt").read_text() == "single\n"
    else:
        obd.assert_detached(top)


async def test_s17_a_failed_attach_names_the_init_layer(
    start_obd: StartObd, images: Images
) -> None:
    """DESIGN-v1 §17: `failed to attach overlaybd for docker init layer: …`, and nothing stays."""
    obd, top_chain, top = await docker_image(start_obd, images.single)
    obd.sim.control.set(fail_open=only("registry said 403", top))
    init_key, _, _ = keys("c1", 20)
    error = await expect_status(obd.prepare(init_key, top_chain), Status.UNKNOWN)
    message = error.message or ""
    assert message.startswith("failed to attach overlaybd for docker init layer: "), message
    assert "registry said 403" in message
    await expect_status(obd.stat(init_key), Status.NOT_FOUND)
    obd.assert_detached(top)
    obd.sim.control.clear()
    await obd.prepare(init_key, top_chain)
    obd.assert_attached(top, mounted="ro")


async def commit_plain_layer(obd: Obd, name: str, parent: str, files: dict[str, str]) -> int:
    """A normal OCI layer as containerd unpacks it: prepare, write into fs/, commit."""
    mounts = await obd.prepare(f"extract-1 {name}", parent)
    own = obd.own_id(mounts)
    for file, content in files.items():
        (obd.fs(own) / file).write_text(content)
    await obd.commit(name, f"extract-1 {name}")
    return own


async def test_s17_container_on_a_normal_image_is_the_standard_overlay(
    start_obd: StartObd, tmp_path: Path
) -> None:
    """DESIGN-v1 §17 (v1.4.4 fix): on a normal image the container's lowers are the init
    layer's fs/ and the image layers' fs/, nearest first, in Prepare and in Mounts."""
    obd = await start_obd(**DOCKER)
    bottom = await commit_plain_layer(obd, "sha256:n1", "", {"a.txt": "one\n", "b.txt": "one\n"})
    top = await commit_plain_layer(obd, "sha256:n2", "sha256:n1", {"b.txt": "two\n"})
    init_id, mounts = await set_up_container(obd, "sha256:n2", "c1", 20, tmp_path)
    assert_container_overlay(obd, mounts, init_id, f"{obd.fs(top)}:{obd.fs(bottom)}")
    assert await obd.mounts(keys("c1", 20)[2]) == mounts
    assert obd.leftovers() == []  # no device anywhere
    rootfs = tmp_path / "rootfs"
    obd.mount_for_real(mounts[0], rootfs)
    assert (rootfs / "a.txt").read_text() == "one\n"
    assert (rootfs / "b.txt").read_text() == "two\n"
    assert (rootfs / "etc/hostname").read_text() == INIT_FILES["etc/hostname"]


async def test_s22_quirk13_any_init_infix_is_an_init_layer(
    start_obd: StartObd, images: Images
) -> None:
    """DESIGN-v1 §22 quirk 13: a key with `-init-` anywhere is an init layer, as in Go."""
    obd, top_chain, top = await docker_image(start_obd, images.single)
    mounts = await obd.prepare("moby/20/web-init-extra", top_chain)
    own = obd.id_of(mounts[0].source)
    assert as_tuples(mounts) == [("bind", str(obd.fs(own)), ["rw", "rbind"])]
    obd.assert_attached(top, mounted="ro")
    # "-initial" is no init layer: the usual overlay on the image's device.
    usual = await obd.prepare("moby/21/web-initial", top_chain)
    assert mount_options(usual[0])["lowerdir"] == str(obd.mountpoint(top))


async def test_s17_view_of_an_init_layer_is_read_only(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §17: a view on an init layer sees the init files over the image, read-only."""
    obd, top_chain, top = await docker_image(start_obd, images.three)
    init_id, _ = await set_up_container(obd, top_chain, "c1", 20, tmp_path)
    view = await obd.view("moby/40/c1-parent-view", keys("c1", 20)[1])
    options = mount_options(view[0])
    assert "upperdir" not in options
    assert options["lowerdir"] == f"{obd.fs(init_id)}:{obd.mountpoint(top)}"
    target = tmp_path / "view"
    obd.mount_for_real(view[0], target)
    assert_rootfs(target)


@pytest.mark.parametrize(
    "settings",
    [{"runtimeType": "docker", "rwMode": "dir"}, {"runtimeType": "containerd"}],
    ids=["docker-dir", "containerd"],
)
async def test_s17_docker_mode_needs_docker_and_overlayfs(
    start_obd: StartObd, images: Images, settings: dict[str, str]
) -> None:
    """DESIGN-v1 §17: Docker mode only with runtimeType docker and rwMode overlayfs."""
    obd = await start_obd(**settings)
    top_chain, top = await obd.unpack_top(images.single)
    init_key, _, _ = keys("c1", 20)
    mounts = await obd.prepare(init_key, top_chain)
    own = obd.own_id(mounts)
    if settings.get("rwMode") == "dir":
        # A writable rootfs of its own, as any container in dir mode.
        assert as_tuples(mounts) == [("bind", str(obd.mountpoint(own)), ["rw", "rbind"])]
        obd.assert_attached(own, mounted="rw")
    else:
        assert mounts[0].type == "overlay"
        assert mount_options(mounts[0])["lowerdir"] == str(obd.mountpoint(top))


async def test_s22_quirk11_auto_remove_dev_counts_committed_init_layers_too(
    start_obd: StartObd, images: Images, tmp_path: Path
) -> None:
    """DESIGN-v1 §9 step 4 with §22 quirk 11: with autoRemoveDev in Docker mode, moby giving
    up on an init layer keeps the image device while a stopped container's init layer exists."""
    obd = await start_obd(**DOCKER, autoRemoveDev=True)
    top_chain, top = await obd.unpack_top(images.single)
    await set_up_container(obd, top_chain, "c1", 20, tmp_path)  # stopped: committed init layer
    init_key, _, _ = keys("c2", 30)
    await obd.prepare(init_key, top_chain)
    await obd.remove(init_key)
    obd.assert_attached(top, mounted="ro")
