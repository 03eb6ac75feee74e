import pytest

from obdsnap import labels as L
from obdsnap.errors import InvalidArgument


@pytest.mark.parametrize(
    ("key", "labels", "unpack"),
    [
        ("extract-123 sha256:abc", {}, True),
        ("default/42/extract-123 sha256:abc", {}, True),
        ("k8s.io/7/extract-1 sha256:abc", {}, True),
        ("mycontainer", {L.TARGET_SNAPSHOT_REF: "sha256:abc"}, True),
        ("default/42/mycontainer", {}, False),
        ("default/x/extract-1", {}, False),
        ("my-extract-1", {}, False),
    ],
)
def test_is_unpack(key: str, labels: dict[str, str], unpack: bool) -> None:
    assert L.is_unpack(key, labels) is unpack


def test_acceleration_unpack_needs_the_target_ref() -> None:
    assert L.is_acceleration_unpack({L.TARGET_SNAPSHOT_REF: "x", L.ACCELERATION_LAYER: "yes"})
    assert not L.is_acceleration_unpack({L.ACCELERATION_LAYER: "yes"})
    assert not L.is_acceleration_unpack({L.TARGET_SNAPSHOT_REF: "x", L.ACCELERATION_LAYER: "no"})


def test_label_size_limit_counts_bytes() -> None:
    L.validate_labels({"k": "v" * (4096 - 1)})
    with pytest.raises(InvalidArgument):
        L.validate_labels({"k": "é" * 2048})


@pytest.mark.parametrize("key", ["", "a\x00b", "x" * 4097])
def test_bad_keys(key: str) -> None:
    with pytest.raises(InvalidArgument):
        L.validate_key(key)


@pytest.mark.parametrize(
    "path",
    [
        "relative/trace",
        "/tmp/../etc/passwd",
        "/tmp//trace",
        "/tmp/trace/",
        "/proc/self/mem",
        "/sys/kernel/x",
        "/dev/sda",
        "/var/lib/obd/metadata.db",
        "/var/lib/obd",
    ],
)
def test_bad_trace_paths(path: str) -> None:
    labels = {L.RECORD_TRACE: "yes", L.RECORD_TRACE_PATH: path}
    with pytest.raises(InvalidArgument):
        L.validate_trace_path(labels, "/var/lib/obd")


def test_good_trace_path_and_unrequested_trace() -> None:
    L.validate_trace_path({L.RECORD_TRACE: "yes", L.RECORD_TRACE_PATH: "/tmp/t"}, "/var/lib/obd")
    L.validate_trace_path({L.RECORD_TRACE_PATH: "relative"}, "/var/lib/obd")
