import pytest

from obdsnap import labels as L
from obdsnap.errors import InvalidArgument


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
