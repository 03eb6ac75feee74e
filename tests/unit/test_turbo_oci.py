"""The pure parts of TurboOCI (DESIGN-v1 §12), the fs choice (§11) and the unpack roles (§6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from obdsnap import labels as L
from obdsnap.device.filesystem import FsSpec, spec_for
from obdsnap.labels import TurboOciTarget
from obdsnap.overlaybd.device_config import Lower
from obdsnap.overlaybd.turbo_oci import (
    ext4_fallback,
    inherited_meta,
    meta_fs_type,
    present_metas,
    served_fs_type,
    turbo_lower,
)
from obdsnap.role import (
    DownloadUnpack,
    PlainUnpack,
    RemoteUnpack,
    RwMode,
    ready_at_create,
    role_of,
)

GZIP = TurboOciTarget("sha256:" + "a" * 64, "application/vnd.docker.image.rootfs.diff.tar.gzip")
TAR = TurboOciTarget("sha256:" + "b" * 64, "application/vnd.oci.image.layer.v1.tar")


@pytest.mark.parametrize(
    ("file", "fs_type"),
    [
        ("/r/snapshots/1/fs/erofs.fs.meta", "erofs"),
        ("ext4.fs.meta", "ext4"),
        ("/r/snapshots/1/fs/.fs.meta", None),
        ("/r/snapshots/1/fs/overlaybd.commit", None),
        ("", None),
    ],
)
def test_meta_fs_type_is_read_from_the_file_name(file: str, fs_type: str | None) -> None:
    assert meta_fs_type(file) == fs_type


def test_served_fs_type_is_the_bottom_most_meta() -> None:
    lowers = (
        Lower(digest="sha256:x", dir="/a"),  # a baselayer bottom: no file (§12 rule 7)
        Lower(file="/b/fs/erofs.fs.meta"),
        Lower(file="/c/fs/ext4.fs.meta"),
    )
    assert served_fs_type(lowers) == "erofs"
    assert served_fs_type(lowers[:1]) is None


def test_present_metas_keep_the_configured_order(tmp_path: Path) -> None:
    (tmp_path / "ext4.fs.meta").write_bytes(b"m")
    (tmp_path / "erofs.fs.meta").write_bytes(b"m")
    assert present_metas(tmp_path, ("ext4", "erofs")) == ["ext4", "erofs"]
    assert present_metas(tmp_path, ("erofs", "ext4")) == ["erofs", "ext4"]
    (tmp_path / "erofs.fs.meta").unlink()
    (tmp_path / "erofs.fs.meta").mkdir()  # not a file: not a meta
    assert present_metas(tmp_path, ("erofs", "ext4")) == ["ext4"]


def test_other_layers_inherit_the_bottoms_meta_name() -> None:
    parent = (Lower(file="/r/snapshots/1/fs/erofs.fs.meta"), Lower(file="/x/ext4.fs.meta"))
    assert inherited_meta(Path("/r/snapshots/7/fs"), parent) == Path(
        "/r/snapshots/7/fs/erofs.fs.meta"
    )
    # §22 quirk 12: a baselayer bottom without file gives none, not fs/ itself.
    assert inherited_meta(Path("/r/snapshots/7/fs"), (Lower(digest="sha256:x"),)) is None


def test_turbo_lower_has_a_gzip_index_only_for_gzip_originals() -> None:
    fs_dir = Path("/r/snapshots/3/fs")
    gzipped = turbo_lower(fs_dir, fs_dir / "ext4.fs.meta", GZIP)
    assert gzipped.to_json() == {
        "gzipIndex": "/r/snapshots/3/fs/gzip.meta",
        "file": "/r/snapshots/3/fs/ext4.fs.meta",
        "targetDigest": GZIP.digest,
        "dir": "/r/snapshots/3/fs",
    }
    assert list(turbo_lower(fs_dir, None, TAR).to_json()) == ["targetDigest", "dir"]


def test_ext4_fallback_rewrites_files_with_absolute_paths_only() -> None:
    lowers = (
        Lower(file="/r/snapshots/1/fs/erofs.fs.meta", target_digest="d1"),
        Lower(target_digest="d2", dir="/r/snapshots/2/fs"),
        Lower(file="/r/snapshots/3/fs/ext4.fs.meta"),
    )
    assert [lower.file for lower in ext4_fallback(lowers)] == [
        "/r/snapshots/1/fs/ext4.fs.meta",
        "",
        "/r/snapshots/3/fs/ext4.fs.meta",
    ]


@pytest.mark.parametrize(
    ("fs_type", "mount_options"),
    [("ext4", ("discard",)), ("xfs", ("nouuid", "discard")), ("erofs", ()), ("btrfs", ())],
)
def test_default_mount_options_per_fs_type(fs_type: str, mount_options: tuple[str, ...]) -> None:
    spec = spec_for(fs_type)
    assert (spec.fs_type, spec.mount_options) == (fs_type, mount_options)


def test_spec_for_ext4_is_the_label_less_default() -> None:
    assert spec_for("ext4") == FsSpec()


REMOTE_LABELS = {
    L.TARGET_SNAPSHOT_REF: "sha256:chain",
    L.BLOB_DIGEST: "sha256:blob",
    L.BLOB_SIZE: "10",
    L.IMAGE_REF: "docker.io/library/x:1",
}


@pytest.mark.parametrize(
    ("extra", "role"),
    [
        ({}, RemoteUnpack(target="sha256:chain")),
        ({L.TURBO_OCI_TARGET_DIGEST: "sha256:t"}, PlainUnpack()),
        ({L.FASTOCI_TARGET_DIGEST: "sha256:t"}, PlainUnpack()),
        ({L.DOWNLOAD_REMOTE_BLOB: "download"}, DownloadUnpack()),
        (
            {L.DOWNLOAD_REMOTE_BLOB: "download", L.TURBO_OCI_TARGET_DIGEST: "sha256:t"},
            DownloadUnpack(),
        ),
        ({L.DOWNLOAD_REMOTE_BLOB: "yes"}, RemoteUnpack(target="sha256:chain")),
    ],
)
def test_remote_unpack_roles_in_go_order(extra: dict[str, str], role: object) -> None:
    """DESIGN-v1 §6 steps 2.3 (download), 2.4 (TurboOCI: normal), 2.5 (remote)."""
    assert role_of("extract-1 x", {**REMOTE_LABELS, **extra}, RwMode.OVERLAYFS, None) == role


def test_a_download_unpack_is_ready_only_once_its_config_is_written() -> None:
    assert not ready_at_create(DownloadUnpack())
