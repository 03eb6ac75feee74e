import struct
from pathlib import Path

import pytest

from obdsnap import labels as L
from obdsnap.layout import Layout
from obdsnap.overlaybd.storage_type import (
    LSMT_MAGIC,
    ZFILE_MAGIC,
    StorageType,
    has_overlaybd_magic,
)
from obdsnap.overlaybd.storage_type import detect_storage_type as detect_storage_type_of

REMOTE_LABELS = {
    L.TARGET_SNAPSHOT_REF: "sha256:abc",
    L.BLOB_DIGEST: "sha256:def",
    L.BLOB_SIZE: "123",
    L.IMAGE_REF: "docker.io/library/redis:7",
}


def header(magic: tuple[int, int, int]) -> bytes:
    return struct.pack("<3Q", *magic) + b"\0" * 8


SNAPSHOT_ID = 1


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    directory = Layout(tmp_path).snapshot_dir(SNAPSHOT_ID)
    (directory / "fs").mkdir(parents=True)
    (directory / "block").mkdir()
    return directory


def detect_storage_type(labels: dict[str, str], snapshot: Path) -> StorageType:
    return detect_storage_type_of(labels, Layout(snapshot.parent.parent), SNAPSHOT_ID)


def test_remote_labels_win(snapshot: Path) -> None:
    assert detect_storage_type(REMOTE_LABELS, snapshot) is StorageType.REMOTE_BLOCK


@pytest.mark.parametrize(
    "missing", [L.BLOB_DIGEST, L.BLOB_SIZE, L.TARGET_SNAPSHOT_REF, L.IMAGE_REF]
)
def test_remote_needs_every_label(snapshot: Path, missing: str) -> None:
    labels = {k: v for k, v in REMOTE_LABELS.items() if k != missing}
    assert detect_storage_type(labels, snapshot) is StorageType.NORMAL


def test_cri_image_ref_counts(snapshot: Path) -> None:
    labels = {k: v for k, v in REMOTE_LABELS.items() if k != L.IMAGE_REF}
    labels[L.CRI_IMAGE_REF] = "docker.io/library/redis:7"
    assert detect_storage_type(labels, snapshot) is StorageType.REMOTE_BLOCK


@pytest.mark.parametrize("magic", [ZFILE_MAGIC, LSMT_MAGIC])
def test_commit_file_with_magic_is_local(snapshot: Path, magic: tuple[int, int, int]) -> None:
    (snapshot / "fs" / "overlaybd.commit").write_bytes(header(magic) + b"data")
    assert detect_storage_type({}, snapshot) is StorageType.LOCAL_BLOCK


def test_commit_file_without_magic_is_normal_at_once(snapshot: Path) -> None:
    (snapshot / "fs" / "overlaybd.commit").write_bytes(b"just a file in the layer")
    (snapshot / "block" / "writable_data").write_bytes(header(LSMT_MAGIC))
    assert detect_storage_type({}, snapshot) is StorageType.NORMAL


def test_empty_commit_file_goes_on_to_writable_data(snapshot: Path) -> None:
    (snapshot / "fs" / "overlaybd.commit").write_bytes(b"")
    (snapshot / "block" / "writable_data").write_bytes(header(LSMT_MAGIC))
    assert detect_storage_type({}, snapshot) is StorageType.LOCAL_BLOCK


def test_short_header_is_zero_padded() -> None:
    assert has_overlaybd_magic(struct.pack("<2Q", *LSMT_MAGIC[:2])) is False
    assert has_overlaybd_magic(struct.pack("<3Q", *LSMT_MAGIC)) is True


def test_unreadable_writable_data_is_an_error(snapshot: Path) -> None:
    (snapshot / "block" / "writable_data").mkdir()  # reading a directory fails with EISDIR
    with pytest.raises(IsADirectoryError):
        detect_storage_type({}, snapshot)


def test_unreadable_commit_file_goes_on(snapshot: Path) -> None:
    (snapshot / "fs" / "overlaybd.commit").mkdir()
    assert detect_storage_type({}, snapshot) is StorageType.NORMAL


def test_device_config_marks_remote(snapshot: Path) -> None:
    (snapshot / "block" / "config.v1.json").write_text("{}")
    assert detect_storage_type({}, snapshot) is StorageType.REMOTE_BLOCK


def test_nothing_is_normal(snapshot: Path) -> None:
    assert detect_storage_type({"foo": "bar"}, snapshot) is StorageType.NORMAL


def test_labels_are_checked_before_files(snapshot: Path) -> None:
    (snapshot / "fs" / "overlaybd.commit").write_bytes(b"plain file, no magic")
    assert detect_storage_type(REMOTE_LABELS, snapshot) is StorageType.REMOTE_BLOCK


def test_writable_data_without_magic_is_normal_at_once(snapshot: Path) -> None:
    (snapshot / "block" / "writable_data").write_bytes(b"no magic here")
    (snapshot / "block" / "config.v1.json").write_text("{}")
    assert detect_storage_type({}, snapshot) is StorageType.NORMAL


def test_empty_writable_data_is_an_error(snapshot: Path) -> None:
    """DESIGN-v1 §4 step 6: an empty writable_data is an error, not a reason to go on."""
    (snapshot / "block" / "writable_data").write_bytes(b"")
    (snapshot / "block" / "config.v1.json").write_text("{}")
    with pytest.raises(OSError, match="empty"):
        detect_storage_type({}, snapshot)


def test_unreadable_commit_file_goes_on_to_writable_data(snapshot: Path) -> None:
    (snapshot / "fs" / "overlaybd.commit").mkdir()
    (snapshot / "block" / "writable_data").write_bytes(header(ZFILE_MAGIC))
    assert detect_storage_type({}, snapshot) is StorageType.LOCAL_BLOCK
