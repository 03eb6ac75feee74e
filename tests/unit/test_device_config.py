import json
import stat
from pathlib import Path

import pytest

from obdsnap import labels as L
from obdsnap.errors import InvalidArgument
from obdsnap.overlaybd.device_config import (
    DeviceConfig,
    Lower,
    Upper,
    encode,
    image_ref,
    read_config,
    repo_blob_url,
    write_config,
)


def test_json_matches_the_go_snapshotter() -> None:
    config = DeviceConfig(
        repo_blob_url="https://registry-1.docker.io/v2/library/redis/blobs",
        lowers=(
            Lower(digest="sha256:a", size=123, dir="/r/1/block"),
            Lower(file="/r/2/fs/overlaybd.commit"),
        ),
        upper=Upper(index="/r/3/block/writable_index", data="/r/3/block/writable_data"),
        result_file="/r/3/block/init-debug.log",
        acceleration_layer=True,
        record_trace_path="/trace",
    )
    assert encode(config) == (
        b'{"repoBlobUrl":"https://registry-1.docker.io/v2/library/redis/blobs",'
        b'"lowers":[{"digest":"sha256:a","size":123,"dir":"/r/1/block"},'
        b'{"file":"/r/2/fs/overlaybd.commit"}],'
        b'"upper":{"index":"/r/3/block/writable_index","data":"/r/3/block/writable_data"},'
        b'"resultFile":"/r/3/block/init-debug.log","accelerationLayer":true,"recordTracePath":"/trace"}'
    )


def test_empty_fields_are_omitted_but_the_required_ones_stay() -> None:
    assert json.loads(encode(DeviceConfig(result_file="/x"))) == {
        "repoBlobUrl": "",
        "lowers": [],
        "upper": {},
        "resultFile": "/x",
    }


def test_round_trip(tmp_path: Path) -> None:
    config = DeviceConfig(lowers=(Lower(digest="d", size=1, dir="/a"),), result_file="/r")
    path = tmp_path / "config.v1.json"
    assert write_config(path, config) is True
    assert read_config(path) == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rewritten_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "config.v1.json"
    config = DeviceConfig(result_file="/r")
    write_config(path, config)
    inode = path.stat().st_ino
    assert write_config(path, config) is False
    assert path.stat().st_ino == inode
    assert write_config(path, config.with_lower(Lower(dir="/d"))) is True
    assert [p.name for p in tmp_path.iterdir()] == ["config.v1.json"]


@pytest.mark.parametrize(
    ("reference", "url"),
    [
        ("docker.io/library/redis:7", "https://registry-1.docker.io/v2/library/redis/blobs"),
        (
            "registry.example.com/team/app@sha256:" + "a" * 64,
            "https://registry.example.com/v2/team/app/blobs",
        ),
        ("localhost:5000/app:latest", "https://localhost:5000/v2/app/blobs"),
        ("quay.io/a/b/c", "https://quay.io/v2/a/b/c/blobs"),
        ("redis", "https://redis/v2/redis/blobs"),
    ],
)
def test_repo_blob_url(reference: str, url: str) -> None:
    assert repo_blob_url(reference) == url


@pytest.mark.parametrize("reference", ["", "https://docker.io/redis", "bad host/x", "host/a b"])
def test_bad_references(reference: str) -> None:
    with pytest.raises(InvalidArgument):
        repo_blob_url(reference)


def test_image_ref_prefers_image_ref() -> None:
    assert image_ref({L.IMAGE_REF: "a", L.CRI_IMAGE_REF: "b"}) == "a"
    assert image_ref({L.CRI_IMAGE_REF: "b"}) == "b"
    assert image_ref({}) == ""


def test_a_planted_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "config.v1.json"
    path.symlink_to(victim)
    write_config(path, DeviceConfig(result_file="/r"))
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and read_config(path).result_file == "/r"
