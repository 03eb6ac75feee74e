"""A private registry on 127.0.0.1 (Debian's docker-registry) and pushes to it.

The registry writes an access log (combined format) into its log file, so a
test can count the bytes it served per blob: what containerd really downloaded.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.scrape import free_port

from .ociimage import canonical_json, host_goarch, sha256_digest

REGISTRY_BIN = "/usr/bin/docker-registry"  # Debian's docker-registry (distribution 2.8)
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# '"GET /v2/<repo>/blobs/sha256:<hex> HTTP/1.1" 200 <bytes>' in a combined-format line.
_BLOB_GET = re.compile(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" 2\d\d (\d+)')


class LocalRegistry:
    """docker-registry serving a directory over plain HTTP, on 127.0.0.1 only."""

    def __init__(self, workdir: Path, binary: str = REGISTRY_BIN) -> None:
        self.workdir = workdir
        self.binary = binary
        self.log_path = workdir / "registry.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        # Never through a proxy from the environment: the registry is ours, on loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def reference(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    def start(self, timeout: float = 20.0, attempts: int = 3) -> LocalRegistry:
        for _ in range(attempts):  # the free port may be taken before the registry binds it
            self.port = free_port()
            config = self.workdir / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: warn\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'data'}\n"
                f"http:\n  addr: {self.host}\n"
            )
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    [self.binary, "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready(timeout):
                return self
        raise RuntimeError(f"docker-registry did not start:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while self._process.poll() is None:
            with (
                contextlib.suppress(OSError),
                self._opener.open(self.url + "/v2/", timeout=2) as reply,
            ):
                if reply.status == 200:
                    return True
            if time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def served_bytes(self) -> Counter[str]:
        """Bytes of blob bodies served so far, by digest (from the access log)."""
        served: Counter[str] = Counter()
        if self.log_path.exists():
            for match in _BLOB_GET.finditer(self.log_path.read_text(errors="replace")):
                served[match.group(1)] += int(match.group(2))
        return served

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(
        self, method: str, url: str, data: bytes | None = None, content_type: str = ""
    ) -> tuple[int, Mapping[str, str]]:
        request = urllib.request.Request(url, data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with self._opener.open(request, timeout=60) as reply:
                return reply.status, dict(reply.headers)
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            raise AssertionError(f"{method} {url}: HTTP {error.code}: {body}") from error

    def push_blob(self, repository: str, data: bytes) -> tuple[str, int]:
        """Monolithic upload (POST, then PUT with the digest); returns (digest, size)."""
        digest = sha256_digest(data)
        status, headers = self._call("POST", f"{self.url}/v2/{repository}/blobs/uploads/")
        assert status == 202, status
        location = headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        separator = "&" if "?" in location else "?"
        status, _ = self._call(
            "PUT", f"{location}{separator}digest={digest}", data, "application/octet-stream"
        )
        assert status == 201, status
        return digest, len(data)

    def push_manifest(self, repository: str, tag: str, manifest: bytes) -> None:
        url = f"{self.url}/v2/{repository}/manifests/{tag}"
        status, _ = self._call("PUT", url, manifest, MEDIA_MANIFEST)
        assert status == 201, status


@dataclass(frozen=True)
class PushedImage:
    reference: str
    manifest_digest: str
    config_digest: str


def push_image(
    registry: LocalRegistry,
    repository: str,
    tag: str,
    descriptors: Sequence[Mapping[str, Any]],
    diff_ids: Sequence[str],
) -> PushedImage:
    """A config for ``diff_ids`` and a manifest of the (already pushed) layer ``descriptors``."""
    config = canonical_json(
        {
            "architecture": host_goarch(),
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        }
    )
    config_digest, config_size = registry.push_blob(repository, config)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
            "layers": list(descriptors),
        }
    )
    registry.push_manifest(repository, tag, manifest)
    return PushedImage(registry.reference(repository, tag), sha256_digest(manifest), config_digest)


def layer_descriptor(
    media_type: str, digest: str, size: int, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        descriptor["annotations"] = dict(annotations)
    return descriptor
