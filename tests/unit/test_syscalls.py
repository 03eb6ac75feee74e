"""mount(8)-style options split into MS_* flags and the filesystem's data string."""

from __future__ import annotations

import pytest

from obdsnap.device.syscalls import (
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    parse_options,
)


@pytest.mark.parametrize(
    ("options", "flags", "data"),
    [
        (["discard", "ro"], MS_RDONLY, "discard"),
        (["nouuid", "discard", "rw"], 0, "nouuid,discard"),
        (["ro", "rw"], 0, ""),
        (["rw", "ro"], MS_RDONLY, ""),
        (["noatime", "nodev", "relatime", "defaults"], MS_NOATIME | MS_NODEV | MS_RELATIME, ""),
        (["relatime", "norelatime", "rbind"], MS_BIND | MS_REC, ""),
        (["data=ordered", "errors=remount-ro", "ro"], MS_RDONLY, "data=ordered,errors=remount-ro"),
    ],
)
def test_flags_and_data(options: list[str], flags: int, data: str) -> None:
    assert parse_options(options) == (flags, data)
