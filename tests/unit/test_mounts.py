"""Tests of obdsnap.mounts: mounts built exactly as containerd's overlayfs snapshotter does."""

from __future__ import annotations

from pathlib import Path

import pytest

from obdsnap.mounts import Mount, bind_mount, overlay_has_index_param, overlay_mount

FS = Path("/root/snapshots/7/fs")
WORK = Path("/root/snapshots/7/work")
LOWERS = [Path("/root/snapshots/5/fs"), Path("/root/snapshots/3/fs"), Path("/root/snapshots/1/fs")]


@pytest.mark.parametrize(("readonly", "flag"), [(False, "rw"), (True, "ro")])
def test_bind_mount(readonly: bool, flag: str) -> None:
    mount = bind_mount(FS, readonly=readonly)
    assert mount == Mount(type="bind", source=str(FS), options=(flag, "rbind"))
    assert mount.target == ""


@pytest.mark.parametrize(
    ("index_off", "prefix"), [(True, ("index=off",)), (False, ())], ids=["index-off", "index-on"]
)
def test_active_overlay_options_in_containerd_order(
    index_off: bool, prefix: tuple[str, ...]
) -> None:
    mount = overlay_mount(LOWERS, upper=FS, work=WORK, index_off=index_off)
    assert mount.type == "overlay"
    assert mount.source == "overlay"
    assert mount.target == ""
    assert mount.options == (
        *prefix,
        "workdir=/root/snapshots/7/work",
        "upperdir=/root/snapshots/7/fs",
        "lowerdir=/root/snapshots/5/fs:/root/snapshots/3/fs:/root/snapshots/1/fs",
    )


def test_active_overlay_with_one_lower() -> None:
    mount = overlay_mount(LOWERS[:1], upper=FS, work=WORK, index_off=True)
    assert mount.options == (
        "index=off",
        f"workdir={WORK}",
        f"upperdir={FS}",
        "lowerdir=/root/snapshots/5/fs",
    )


@pytest.mark.parametrize(
    ("index_off", "prefix"), [(True, ("index=off",)), (False, ())], ids=["index-off", "index-on"]
)
def test_readonly_overlay_has_only_lowers(index_off: bool, prefix: tuple[str, ...]) -> None:
    mount = overlay_mount(LOWERS[:2], index_off=index_off)
    assert mount == Mount(
        "overlay", "overlay", (*prefix, "lowerdir=/root/snapshots/5/fs:/root/snapshots/3/fs")
    )


def test_lowers_keep_the_given_order() -> None:
    lowers = [Path(f"/s/{n}/fs") for n in (9, 2, 4, 1)]
    mount = overlay_mount(lowers, upper=FS, work=WORK)
    assert mount.options[-1] == "lowerdir=/s/9/fs:/s/2/fs:/s/4/fs:/s/1/fs"


def test_never_metacopy() -> None:
    for mount in (
        overlay_mount(LOWERS, upper=FS, work=WORK, index_off=True),
        overlay_mount(LOWERS),
        bind_mount(FS, readonly=True),
    ):
        assert not any("metacopy" in option for option in mount.options)


def test_index_param_present(tmp_path: Path) -> None:
    params = tmp_path / "module" / "overlay" / "parameters"
    params.mkdir(parents=True)
    (params / "index").write_text("N\n")
    assert overlay_has_index_param(tmp_path) is True


def test_index_param_absent(tmp_path: Path) -> None:
    assert overlay_has_index_param(tmp_path) is False
    params = tmp_path / "module" / "overlay" / "parameters"
    params.mkdir(parents=True)
    (params / "metacopy").write_text("N\n")
    assert overlay_has_index_param(tmp_path) is False
