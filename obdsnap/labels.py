"""Snapshot labels obdsnap reads or writes, and the limits containerd puts on labels."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from obdsnap.errors import InvalidArgument

# containerd's labels.Validate: key and value together may not exceed this many bytes.
MAX_LABEL_BYTES = 4096
MAX_KEY_BYTES = 4096

TARGET_SNAPSHOT_REF = "containerd.io/snapshot.ref"
IMAGE_REF = "containerd.io/snapshot/image-ref"
CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
BLOB_DIGEST = "containerd.io/snapshot/overlaybd/blob-digest"
BLOB_SIZE = "containerd.io/snapshot/overlaybd/blob-size"
BLOB_FS_TYPE = "containerd.io/snapshot/overlaybd/blob-fs-type"
ACCELERATION_LAYER = "containerd.io/snapshot/overlaybd/acceleration-layer"
RECORD_TRACE = "containerd.io/snapshot/overlaybd/record-trace"
RECORD_TRACE_PATH = "containerd.io/snapshot/overlaybd/record-trace-path"
ZFILE_CONFIG = "containerd.io/snapshot/overlaybd/zfile-config"
WRITABLE = "containerd.io/snapshot/overlaybd.writable"
LOCAL_COMMIT_PATH = "containerd.io/snapshot/overlaybd.localcommitpath"
REMOTE = "containerd.io/snapshot/remote"
REMOTE_VALUE = "remote snapshot"
# Added by the Go snapshotter v0.6.1-v1.4.4 (DESIGN-v1 §2).
VSIZE = "containerd.io/snapshot/overlaybd/vsize"  # GB, a writable layer without parent
DEFAULT_VSIZE_GB = 64
TURBO_OCI_TARGET_DIGEST = "containerd.io/snapshot/overlaybd/turbo-oci/target-digest"
TURBO_OCI_TARGET_MEDIA_TYPE = "containerd.io/snapshot/overlaybd/turbo-oci/target-media-type"
FASTOCI_TARGET_DIGEST = "containerd.io/snapshot/overlaybd/fastoci/target-digest"  # legacy name
FASTOCI_TARGET_MEDIA_TYPE = "containerd.io/snapshot/overlaybd/fastoci/target-media-type"
DOWNLOAD_REMOTE_BLOB = "containerd.io/snapshot/overlaybd/download-remote-blob"
DOWNLOAD_REMOTE_BLOB_VALUE = "download"
CONVERT_TO_TURBO_OCI = "containerd.io/snapshot/overlaybd/convert2turbo-oci"
# Original layers whose TurboOCI layer gets a gzip index (DESIGN-v1 §12 rule 2).
GZIP_LAYER_MEDIA_TYPES = (
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
SNAPSHOT_TYPE = "containerd.io/snapshot/type"
SNAPSHOT_TYPE_IMAGE = "image"  # an image layer prepared without snapshot.ref: not a rootfs
DISK_QUOTA = "containerd.io/snapshot/disk_quota"
ACTIVE_PATH = "containerd.io/snapshot/overlay.active.path"  # where writable_data/_index live


@dataclass(frozen=True)
class TurboOciTarget:
    """What a TurboOCI meta layer's labels say of the original OCI layer (DESIGN-v1 §2, §12)."""

    digest: str
    media_type: str

    @property
    def gzipped(self) -> bool:
        return self.media_type in GZIP_LAYER_MEDIA_TYPES


def turbo_oci_target(labels: Mapping[str, str]) -> TurboOciTarget | None:
    """The TurboOCI target of a layer, by the current labels, else the legacy ``fastoci`` ones."""
    digest = labels.get(TURBO_OCI_TARGET_DIGEST)
    if digest:
        return TurboOciTarget(digest, labels.get(TURBO_OCI_TARGET_MEDIA_TYPE, ""))
    digest = labels.get(FASTOCI_TARGET_DIGEST)
    if digest:
        return TurboOciTarget(digest, labels.get(FASTOCI_TARGET_MEDIA_TYPE, ""))
    return None


def validate_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL_BYTES:
            raise InvalidArgument(
                f"label key and value length ({size} bytes) greater than maximum size "
                f"({MAX_LABEL_BYTES} bytes), key: {key[:64]!r}"
            )
        if not key:
            raise InvalidArgument("label key must not be empty")


FORBIDDEN_TRACE_ROOTS = ("/proc", "/sys", "/dev")


def validate_trace_path(labels: Mapping[str, str], root: str) -> None:
    """``record-trace-path`` becomes a file overlaybd-tcmu writes as root: keep it harmless.

    It must be absolute and clean (no ``..``, no ``//``), and outside kernel
    interfaces and the snapshotter's own root.
    """
    path = labels.get(RECORD_TRACE_PATH)
    if path is None or labels.get(RECORD_TRACE) != "yes":
        return
    if not path.startswith("/") or posixpath.normpath(path) != path or "\x00" in path:
        raise InvalidArgument(f"{RECORD_TRACE_PATH} must be a clean absolute path, got {path!r}")
    for forbidden in (*FORBIDDEN_TRACE_ROOTS, root.rstrip("/")):
        if path == forbidden or path.startswith(forbidden + "/"):
            raise InvalidArgument(f"{RECORD_TRACE_PATH} may not be under {forbidden}: {path!r}")


def validate_active_path(path: str, root: str) -> None:
    """``overlay.active.path``: a directory obdsnap creates and writes as root (DESIGN-v1 §6).

    Held to the rules of the trace path: absolute and clean, and outside kernel
    interfaces and the snapshotter's own root.
    """
    if not path.startswith("/") or posixpath.normpath(path) != path or "\x00" in path:
        raise InvalidArgument(f"{ACTIVE_PATH} must be a clean absolute path, got {path!r}")
    for forbidden in (*FORBIDDEN_TRACE_ROOTS, root.rstrip("/")):
        if path == forbidden or path.startswith(forbidden + "/"):
            raise InvalidArgument(f"{ACTIVE_PATH} may not be under {forbidden}: {path!r}")


def validate_key(key: str, what: str = "key") -> None:
    """Snapshot keys and names: non-empty, no NUL, at most 4096 bytes."""
    if not key:
        raise InvalidArgument(f"snapshot {what} must not be empty")
    if "\x00" in key:
        raise InvalidArgument(f"snapshot {what} must not contain NUL")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidArgument(f"snapshot {what} is longer than {MAX_KEY_BYTES} bytes")
