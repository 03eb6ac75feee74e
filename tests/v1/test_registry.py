"""DESIGN-v1 §18: ``mirrorRegistry`` entries marked ``insecure`` give their host ``http://``
blob URLs in the device configs of remote layers."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from grpclib.const import Status
from support.block import Obd, remote_labels
from support.block_fixtures import Images, StartObd
from support.simulator import MISSING
from support.snapshots import expect_status

pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

_targets = itertools.count(1)


async def unpack(obd: Obd, images: Images, image_ref: str) -> tuple[str, str]:
    """A remote layer unpacked from ``image_ref``: its name and its config's repoBlobUrl."""
    target = f"sha256:layer-{next(_targets)}"
    labels = remote_labels(target, images.single.layers[0], image_ref)
    await expect_status(obd.prepare(f"extract-1 {target}", "", labels), Status.ALREADY_EXISTS)
    url = obd.config(obd.latest_id())["repoBlobUrl"]
    assert isinstance(url, str)
    return target, url


INSECURE_LOCAL = [{"host": "localhost:5000", "insecure": True}]


@pytest.mark.parametrize(
    ("mirrors", "image_ref", "url"),
    [
        (INSECURE_LOCAL, "localhost:5000/team/app:v1", "http://localhost:5000/v2/team/app/blobs"),
        (None, "localhost:5000/team/app:v1", "https://localhost:5000/v2/team/app/blobs"),
        (
            [{"host": "localhost:5000", "insecure": False}],
            "localhost:5000/team/app:v1",
            "https://localhost:5000/v2/team/app/blobs",
        ),
        (INSECURE_LOCAL, "localhost:5001/team/app:v1", "https://localhost:5001/v2/team/app/blobs"),
        (INSECURE_LOCAL, "localhost/team/app:v1", "https://localhost/v2/team/app/blobs"),
        (INSECURE_LOCAL, "quay.io/team/app:v1", "https://quay.io/v2/team/app/blobs"),
        (
            [{"host": "registry-1.docker.io", "insecure": True}],
            "docker.io/library/app:1",
            "http://registry-1.docker.io/v2/library/app/blobs",
        ),
        (
            [{"host": "docker.io", "insecure": True}],
            "docker.io/library/app:1",
            "https://registry-1.docker.io/v2/library/app/blobs",
        ),
    ],
)
async def test_s18_insecure_mirror_host_gets_http_blob_urls(
    start_obd: StartObd,
    images: Images,
    mirrors: list[dict[str, Any]] | None,
    image_ref: str,
    url: str,
) -> None:
    """DESIGN-v1 §18: http:// when a mirrorRegistry entry has the computed host (docker.io
    rewritten, port included) and insecure: true; https:// otherwise."""
    settings = {} if mirrors is None else {"mirrorRegistry": mirrors}
    obd = await start_obd(**settings)
    assert (await unpack(obd, images, image_ref))[1] == url


async def test_s18_http_layer_serves_a_rootfs(start_obd: StartObd, images: Images) -> None:
    """DESIGN-v1 §18: a layer configured with an http:// blob URL opens as a device."""
    obd = await start_obd(mirrorRegistry=INSECURE_LOCAL)
    layer, url = await unpack(obd, images, "localhost:5000/team/app:v1")
    assert url.startswith("http://")
    layer_id = obd.latest_id()
    mounts = await obd.prepare("rootfs", layer)
    assert f"lowerdir={obd.mountpoint(layer_id)}" in mounts[0].options
    obd.assert_attached(layer_id, mounted="ro")
