"""overlaybd-tcmu's part: open the image a device's config.v1.json describes.

Validation follows overlaybd's ``ImageFile``: an acceleration layer (the last
lower when ``accelerationLayer`` is set) only carries a trace; a lower is
opened from ``file``, else from ``dir/overlaybd.commit`` or, failing that,
``dir/overlaybd.sealed`` (a sealed writable layer) when present, else from the
registry by ``digest`` (here: the blob store, ``<store>/sha256/<hex>``, checked
against the size and digest); a TurboOCI lower (``targetDigest``) is opened by
:mod:`tcmusim.turbo_lower`; a lower with only a ``dir`` and nothing
in it carries no image data. The result file gets ``success`` or
``failed:<reason>`` before the open returns.

Serving (:mod:`tcmusim.backing`): the top data lower's image (each layer, and
each TurboOCI meta, holds the whole merged image) is expanded into a shared sparse cache file for a
read-only device; a writable device is the upper's data file itself, filled
from the top lower's image on its first open. Either way a loop device is bound
to it. The config's fields are read by :mod:`tcmusim.imageconfig`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tcmusim import layerfmt, loopdev
from tcmusim.backing import Backing, ImageCache, ServedLayer
from tcmusim.imageconfig import ImageConfig, LowerConfig, parse_image_config
from tcmusim.knobs import DeviceKnobs
from tcmusim.layerfmt import CommittedLayer, Kind, LayerFormatError
from tcmusim.mkimage.layers import sha256_of
from tcmusim.slowio import SlowIO
from tcmusim.turbo_lower import TurboLayer, TurboOpenError, blob_url, find_blob, open_turbo_lower
from tcmusim.turbo_meta import META_KEY

log = logging.getLogger("tcmusim.overlaybd")

COMMIT_FILE_NAME = "overlaybd.commit"
SEALED_FILE_NAME = "overlaybd.sealed"
HANDLER = "overlaybd"


class OpenError(Exception):
    """The open failed; ``errno`` is what the enable write returns."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.errno = code
        self.reason = reason


class _Failed(Exception):
    """The image cannot be opened: goes to the result file as ``failed:<reason>``."""


class Overlaybd:
    """The overlaybd-tcmu daemon, as far as opening devices goes."""

    def __init__(
        self,
        blob_store: Path,
        cache: ImageCache,
        slowio: SlowIO | None,
        journal: loopdev.Journal | None = None,
    ) -> None:
        self._journal = journal or loopdev.Journal(None)
        self._blob_store = blob_store
        self._cache = cache
        self._slowio = slowio
        self._verified: dict[tuple[str, int, int, int], str] = {}
        self._verified_lock = threading.Lock()

    def open(
        self, device: str, cfgstring: str, knobs: DeviceKnobs, stop: threading.Event
    ) -> Backing:
        handler, _, config_path = cfgstring.partition("/")
        if handler != HANDLER:
            raise OpenError(errno.ENOENT, f"no tcmu handler for {handler!r}")
        try:
            with open(config_path, "rb") as f:
                document = json.load(f)
        except (OSError, ValueError) as exc:
            # overlaybd: "error parse image config", and no result file (it is in the config).
            raise OpenError(errno.EIO, f"error parse image config {config_path}: {exc}") from exc
        result_file = document.get("resultFile") if isinstance(document, dict) else None
        if not isinstance(result_file, str) or not result_file:
            raise OpenError(errno.EIO, f"no resultFile in image config {config_path}")

        if knobs.open_latency > 0 and stop.wait(knobs.open_latency):
            self._write_result(device, result_file, "failed:overlaybd-tcmu is shutting down")
            raise OpenError(errno.EIO, "shutting down")
        try:
            if knobs.fail_open:
                raise _Failed(knobs.fail_open)
            try:
                config = parse_image_config(document)
            except ValueError as exc:
                raise _Failed(f"invalid image config: {exc}") from exc
            backing = self._open_image(device, config, knobs)
        except _Failed as failure:
            reason = str(failure)
            self._write_result(device, result_file, f"failed:{reason}")
            raise OpenError(errno.EIO, reason) from None
        self._write_result(device, result_file, "success")
        if config.record_trace_path:
            self._write_trace(device, config, backing)
        return backing

    # -- layers ---------------------------------------------------------------------

    def _open_image(self, device: str, config: ImageConfig, knobs: DeviceKnobs) -> Backing:
        lowers = list(config.lowers)
        if config.acceleration_layer and config.record_trace_path:
            raise _Failed("Cannot record trace while acceleration layer exists")
        if config.acceleration_layer and lowers:
            accel = lowers.pop()
            if accel.dir and not os.path.isdir(accel.dir):
                raise _Failed(f"acceleration layer dir {accel.dir}: No such file or directory")
            log.info("%s: acceleration layer found at %s, ignore the last lower", device, accel.dir)
        layers: list[ServedLayer] = []
        for index, lower in enumerate(lowers):
            layer = self._open_lower(device, index, lower, config.repo_blob_url)
            if isinstance(layer, CommittedLayer):
                _check_chain(index, layer, layers[-1] if layers else None)
            if layer is not None:
                layers.append(layer)
        top = layers[-1] if layers else None
        described = [layer.path for layer in layers]
        if config.upper_index and config.upper_data:
            return self._open_writable(device, config, top, described, knobs)
        if top is None:
            raise _Failed("failed to create overlaybd device: no layer to serve")
        image = self._cache.acquire(top)
        cleanups: list[Callable[[], None]] = [lambda: self._cache.release(image)]
        return self._bind(device, str(image), 0, top.virtual_size, True, described, cleanups, knobs)

    def _open_lower(
        self, device: str, index: int, lower: LowerConfig, repo_blob_url: str
    ) -> ServedLayer | None:
        if lower.target_digest:
            return self._open_turbo(lower, repo_blob_url)
        if lower.file:
            return _open_local(lower.file)
        for name in (COMMIT_FILE_NAME, SEALED_FILE_NAME) if lower.dir else ():
            if os.path.exists(os.path.join(lower.dir, name)):
                return _open_local(os.path.join(lower.dir, name))
        if lower.digest:
            return self._open_remote(lower, repo_blob_url)
        if lower.dir:
            if not os.path.isdir(lower.dir):
                raise _Failed(
                    f"failed to open layer {index}: {lower.dir}: No such file or directory"
                )
            log.info("%s: lower %d (%s) holds no image data, skipped", device, index, lower.dir)
            return None
        raise _Failed(f"failed to open layer {index}: it has no file, dir or digest")

    def _open_remote(self, lower: LowerConfig, repo_blob_url: str) -> CommittedLayer:
        blob = self._find_blob(lower.digest, repo_blob_url)
        url = blob_url(repo_blob_url, lower.digest)
        size = blob.stat().st_size
        if lower.size and size != lower.size:
            raise _Failed(
                f"failed to open remote file {url}: blob has {size} bytes, "
                f"the config says {lower.size}"
            )
        try:
            return layerfmt.open_committed(str(blob))
        except LayerFormatError as exc:
            raise _Failed(f"failed to open remote file {url} as an overlaybd layer: {exc}") from exc

    def _find_blob(self, digest: str, repo_blob_url: str) -> Path:
        try:
            return find_blob(digest, repo_blob_url, self._blob_store, self._blob_digest)
        except TurboOpenError as exc:
            raise _Failed(str(exc)) from None

    def _open_turbo(self, lower: LowerConfig, repo_blob_url: str) -> TurboLayer:
        try:
            return open_turbo_lower(lower, repo_blob_url, self._blob_store, self._blob_digest)
        except TurboOpenError as exc:
            raise _Failed(str(exc)) from None

    def _blob_digest(self, blob: Path) -> str:
        return self._digest_of(blob, blob.stat())

    def _digest_of(self, blob: Path, st: os.stat_result) -> str:
        key = (str(blob), st.st_ino, st.st_size, st.st_mtime_ns)
        with self._verified_lock:
            known = self._verified.get(key)
        if known is None:
            known = sha256_of(blob)
            with self._verified_lock:
                self._verified[key] = known
        return known

    # -- the writable layer --------------------------------------------------------------

    def _open_writable(
        self,
        device: str,
        config: ImageConfig,
        top: ServedLayer | None,
        described: list[str],
        knobs: DeviceKnobs,
    ) -> Backing:
        data_path, index_path = config.upper_data, config.upper_index
        try:
            fd = os.open(data_path, os.O_RDWR)
        except OSError as exc:
            raise _Failed(f"failed to open upper layer data {data_path}: {_strerror(exc)}") from exc
        try:
            header = self._upper_header(fd, data_path, index_path)
            parent = top.uuid if top else ""
            if not header.initialized:
                _adopt_size(fd, header, top, data_path)
                if top is not None:
                    if top.virtual_size > header.virtual_size:
                        raise _Failed(
                            f"failed to create overlaybd device: upper layer {data_path} "
                            f"({header.virtual_size} bytes) is smaller than its lowers "
                            f"({top.virtual_size} bytes)"
                        )
                    started = time.monotonic()
                    top.unpack_into(fd, layerfmt.HEADER_SIZE)
                    log.info(
                        "%s: upper %s initialised from %s in %.1f ms",
                        device,
                        data_path,
                        top.path,
                        (time.monotonic() - started) * 1000,
                    )
                header.parent_uuid, header.initialized = parent, True
                layerfmt.write_header(fd, header)
                os.fsync(fd)
            elif header.parent_uuid != parent:
                raise _Failed(
                    f"failed to create overlaybd device: upper layer {data_path} was made on "
                    f"layer {header.parent_uuid or '(none)'}, but the top lower is "
                    f"{parent or '(none)'}"
                )
        finally:
            os.close(fd)
        return self._bind(
            device,
            data_path,
            layerfmt.HEADER_SIZE,
            header.virtual_size,
            False,
            [*described, data_path],
            [],
            knobs,
        )

    @staticmethod
    def _upper_header(fd: int, data_path: str, index_path: str) -> layerfmt.Header:
        try:
            header = layerfmt.read_header(fd)
        except LayerFormatError as exc:
            raise _Failed(f"failed to open upper layer data {data_path}: {exc}") from exc
        if header.kind is not Kind.DATA:
            raise _Failed(f"failed to open upper layer data {data_path}: a {header.kind} file")
        try:
            index_fd = os.open(index_path, os.O_RDWR)
        except OSError as exc:
            raise _Failed(
                f"failed to open upper layer index {index_path}: {_strerror(exc)}"
            ) from exc
        try:
            index = layerfmt.read_header(index_fd)
        except LayerFormatError as exc:
            raise _Failed(f"failed to open upper layer index {index_path}: {exc}") from exc
        finally:
            os.close(index_fd)
        if index.kind is not Kind.INDEX or index.data_uuid != header.uuid:
            raise _Failed(
                f"failed to open upper layer: index {index_path} does not belong to {data_path}"
            )
        return header

    # -- serving ----------------------------------------------------------------------------

    def _bind(
        self,
        device: str,
        path: str,
        offset: int,
        size: int,
        read_only: bool,
        layers: list[str],
        cleanups: list[Callable[[], None]],
        knobs: DeviceKnobs,
    ) -> Backing:
        backing_path = path
        if knobs.slow_io_ms > 0 and self._slowio is not None:
            slowio = self._slowio
            backing_path = slowio.expose(path, device, writable=not read_only)
            cleanups.append(lambda: slowio.withdraw(backing_path))
        try:
            loop = loopdev.attach(backing_path, offset=offset, sizelimit=size, read_only=read_only)
        except loopdev.LoopError as exc:
            for cleanup in reversed(cleanups):
                cleanup()
            raise _Failed(f"failed to create overlaybd device: losetup: {exc}") from exc
        self._journal.attached(loop, backing_path)
        return Backing(device, loop, size, read_only, layers, cleanups, self._journal)

    @staticmethod
    def _write_result(device: str, path: str, text: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("%s: failed to open result file %s: %s", device, path, exc)
            return
        log.info("%s: result %s <- %r", device, path, text)

    @staticmethod
    def _write_trace(device: str, config: ImageConfig, backing: Backing) -> None:
        trace = {
            "tcmusim_trace": 1,
            "device": device,
            "loop": backing.loop.path,
            "layers": backing.layers,
            "recorded_at": time.time(),
        }
        try:
            with open(config.record_trace_path, "w") as f:
                json.dump(trace, f)
                f.write("\n")
        except OSError as exc:
            log.error("%s: cannot write trace %s: %s", device, config.record_trace_path, exc)


def _adopt_size(fd: int, header: layerfmt.Header, top: ServedLayer | None, path: str) -> None:
    """A writable layer created with vsize 0 takes its lowers' size on its first open."""
    if header.virtual_size:
        return
    if top is None:
        raise _Failed(f"failed to create overlaybd device: upper layer {path} has no size")
    header.virtual_size = top.virtual_size
    os.ftruncate(fd, layerfmt.HEADER_SIZE + header.virtual_size)


def _check_chain(index: int, layer: CommittedLayer, below: ServedLayer | None) -> None:
    """Lowers are listed base first: each one must have been built on the one before.

    TurboOCI lowers are not chained: each one's meta holds the whole merged filesystem.
    """
    expected = below.uuid if below else ""
    if layer.header.parent_uuid == expected:
        return
    built_on = layer.header.parent_uuid or "nothing (a base layer)"
    found = f"{below.uuid} ({below.path})" if below else "nothing"
    raise _Failed(
        f"failed to create overlaybd device: layer {index} ({layer.path}) was built on "
        f"{built_on}, but the lower below it is {found}"
    )


def _open_local(path: str) -> CommittedLayer:
    try:
        layer = layerfmt.open_committed(path)
    except OSError as exc:
        raise _Failed(f"failed to open local file {path}: {_strerror(exc)}") from exc
    except LayerFormatError as exc:
        raise _Failed(f"failed to create overlaybd device: {path}: {exc}") from exc
    if META_KEY in layer.header.extra:
        # Its file data is in the original blob: served without it, files would read as zeros.
        raise _Failed(f"failed to create overlaybd device: {path}: a TurboOCI fs meta, and the "
                      "lower has no targetDigest")  # fmt: skip
    return layer


def _strerror(exc: OSError) -> str:
    return exc.strerror or os.strerror(exc.errno or errno.EIO)
