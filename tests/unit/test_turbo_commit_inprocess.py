"""A TurboOCI Commit cut short (DESIGN-v1 §8 step 5, §12): the config is durable before the
row commits, so a crash never leaves a committed layer without its config."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.inprocess import InProcess, remote_layer_labels

from obdsnap import labels as L
from obdsnap.storage import Kind

TARGET = "sha256:" + "ef" * 32
TURBO = {
    **remote_layer_labels("turbo-layer", "sha256:" + "ab" * 32, 4096, "registry.example/app:1"),
    L.TURBO_OCI_TARGET_DIGEST: TARGET,
    L.TURBO_OCI_TARGET_MEDIA_TYPE: "application/vnd.oci.image.layer.v1.tar",
}


async def test_a_crash_before_the_row_commits_leaves_the_layer_active(
    obd: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    await obd.snapshotter.prepare("extract-turbo", "", TURBO)
    own = obd.id_of("extract-turbo")
    fs_dir = obd.layout.fs_dir(own)
    (fs_dir / "ext4.fs.meta").write_bytes(b"meta")
    config = obd.layout.block(own).config
    config_there: list[bool] = []

    async def killed(*args: Any, **kwargs: Any) -> None:
        config_there.append(config.exists())
        raise RuntimeError("killed before the row commits")

    monkeypatch.setattr(obd.store, "commit", killed)
    with pytest.raises(RuntimeError):
        await obd.snapshotter.commit("turbo-layer", "extract-turbo", TURBO)
    assert config_there == [True]
    monkeypatch.undo()
    await obd.restart()

    # Still the active unpack, which containerd commits again.
    assert obd.snapshotter.stat("extract-turbo").kind == Kind.ACTIVE
    await obd.snapshotter.commit("turbo-layer", "extract-turbo", TURBO)
    assert obd.snapshotter.stat("turbo-layer").kind == Kind.COMMITTED
    lower = {"file": str(fs_dir / "ext4.fs.meta"), "targetDigest": TARGET, "dir": str(fs_dir)}
    assert json.loads(config.read_text())["lowers"] == [lower]
