"""overlaybd-tcmu's TurboOCI lowers: ``{file: <fs meta>, targetDigest, gzipIndex?, dir}``.

A TurboOCI lower is opened from its fs meta (:mod:`tcmusim.turbo_meta`) and its
original OCI layer blob, fetched as a remote layer is: ``repoBlobUrl`` +
``/`` + ``targetDigest``, found in the simulator's blob store (or, for a
``file://`` repoBlobUrl, in that directory) and checked against its digest.
``gzipIndex`` must be present exactly when the original is gzip'd, as
overlaybd reads a gzip original only through its index.

Each meta holds the merged filesystem up to its layer, so the top TurboOCI
lower alone is served: its meta's blocks, with every data region filled from
the original blob the data map names (decompressed for a gzip original).
"""

from __future__ import annotations

import errno
import gzip
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tcmusim.imageconfig import LowerConfig
from tcmusim.layerfmt import LayerFormatError
from tcmusim.turbo_meta import FsMeta, Region, read_meta

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20

DigestOf = Callable[[Path], str]  # the sha256 hex of a blob (cached by the caller)


class TurboOpenError(Exception):
    """The lower cannot be opened; the text goes to the result file."""


@dataclass
class TurboLayer:
    """An opened TurboOCI lower: its meta and where each original blob it reads is."""

    meta: FsMeta
    blobs: dict[str, Path]

    @property
    def path(self) -> str:
        return self.meta.path

    @property
    def stat(self) -> os.stat_result:
        return self.meta.stat

    @property
    def uuid(self) -> str:
        return self.meta.uuid

    @property
    def virtual_size(self) -> int:
        return self.meta.virtual_size

    def unpack_into(self, dst: int, dst_base: int) -> None:
        """The whole filesystem: the meta's blocks, then each file's data from its original."""
        self.meta.unpack_into(dst, dst_base)
        data_map = self.meta.data_map
        by_target: dict[int, list[Region]] = {}
        for region in data_map.regions:
            by_target.setdefault(region.target, []).append(region)
        for target, regions in by_target.items():
            blob = self.blobs[data_map.targets[target]]
            regions.sort(key=lambda region: region.tar_offset)
            _fill(blob, regions, dst, dst_base)


def _fill(blob: Path, regions: list[Region], dst: int, dst_base: int) -> None:
    opener = gzip.open if is_gzip(blob) else open
    with opener(blob, "rb") as tar:
        for region in regions:
            tar.seek(region.tar_offset)
            done = 0
            while done < region.length:
                chunk = tar.read(min(_CHUNK, region.length - done))
                if not chunk:
                    raise LayerFormatError(f"{blob} is shorter than its data map says")
                os.pwrite(dst, chunk, dst_base + region.device_offset + done)
                done += len(chunk)


def is_gzip(blob: Path) -> bool:
    """A gzip stream (its magic), whatever the name."""
    with open(blob, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def open_turbo_lower(
    lower: LowerConfig, repo_blob_url: str, blob_store: Path | None, digest_of: DigestOf
) -> TurboLayer:
    """Open a TurboOCI lower; TurboOpenError (the result file's text) if it cannot be."""
    try:
        meta = read_meta(lower.file)
    except OSError as exc:
        raise TurboOpenError(f"failed to open local file {lower.file}: {_strerror(exc)}") from exc
    except LayerFormatError as exc:
        raise TurboOpenError(f"failed to create overlaybd device: {lower.file}: {exc}") from exc
    target = find_blob(lower.target_digest, repo_blob_url, blob_store, digest_of)
    _check_gzip_index(lower, target, blob_url(repo_blob_url, lower.target_digest))
    blobs = {lower.target_digest: target}
    for digest in meta.data_map.targets:
        if digest not in blobs:
            blobs[digest] = find_blob(digest, repo_blob_url, blob_store, digest_of)
    return TurboLayer(meta, blobs)


def blob_url(repo_blob_url: str, digest: str) -> str:
    return repo_blob_url + ("" if repo_blob_url.endswith("/") else "/") + digest


def find_blob(
    digest: str, repo_blob_url: str, blob_store: Path | None, digest_of: DigestOf
) -> Path:
    """Where the registry blob ``digest`` is, checked against its digest."""
    if not repo_blob_url:
        raise TurboOpenError("empty repoBlobUrl")
    url = blob_url(repo_blob_url, digest)
    match = _DIGEST.match(digest)
    if match is None:
        raise TurboOpenError(f"failed to open remote file {url}: Unexpected response")
    candidates = [blob_store / "sha256" / match.group(1)] if blob_store else []
    if repo_blob_url.startswith("file://"):
        candidates.append(Path(url.removeprefix("file://")))
    for blob in candidates:
        if blob.is_file():
            if digest_of(blob) != match.group(1):
                raise TurboOpenError(f"failed to open remote file {url}: digest mismatch")
            return blob
    reason = os.strerror(errno.ENOENT)
    raise TurboOpenError(f"failed to open remote file {url}: {reason}")


def _check_gzip_index(lower: LowerConfig, blob: Path, url: str) -> None:
    gzipped = is_gzip(blob)
    if lower.gzip_index:
        if not os.path.isfile(lower.gzip_index):
            raise TurboOpenError(
                f"failed to open gzip index {lower.gzip_index}: {os.strerror(errno.ENOENT)}"
            )
        if not gzipped:
            raise TurboOpenError(f"failed to open remote file {url}: gzipIndex given, not gzip")
    elif gzipped:
        raise TurboOpenError(f"failed to open remote file {url}: gzip blob without gzipIndex")


def _strerror(exc: OSError) -> str:
    return exc.strerror or os.strerror(exc.errno or errno.EIO)
